"""The tiny model file the benchmark and benchmark-worker tests time."""

from __future__ import annotations

import pytest
import torch

from shrinkflow.model_files.pt import save_model
from shrinkflow.nets.zoo import build_model


@pytest.fixture
def tiny_pt(tmp_path):
    spec = {"arch": "cnn", "widths": [4, 8], "depth": 1, "width_mult": 1.0, "in_channels": 1,
            "num_classes": 3, "mean": [0.5], "std": [0.25]}
    torch.manual_seed(0)
    model = build_model(spec)
    path = tmp_path / "tiny.pt"
    save_model(path, model, spec)
    return path, model
