"""Fixtures the compression tests share."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from shrinkflow.nets.zoo import build_model
from shrinkflow.params.common import TrainConfig
from shrinkflow.training.loop import fit
from unit.compress.pruning import quiet, spec_for


@pytest.fixture(scope="module")
def trained_cnn(tiny_data_shared) -> nn.Module:
    """A 1-channel cnn trained once for the module; tests use it read-only or deep-copy it."""
    torch.manual_seed(0)
    model = build_model(spec_for("cnn", channels=1))
    fit(model, tiny_data_shared.train, tiny_data_shared.val,
        TrainConfig(epochs=6, batch_size=32, lr=0.05), log=quiet)
    return model.eval()
