"""Accuracy and the one logit-parity check (shrinkflow.measure.metrics)."""

from __future__ import annotations

import pytest
import torch

from shrinkflow.measure.metrics import logit_parity


def test_export_parity_measures_difference_and_agreement():
    ref = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 1.0]])
    out = logit_parity(ref, torch.tensor([[1.0, 0.5], [1.5, 1.0], [2.0, 1.0]]))
    assert out["max_abs_diff"] == 1.5 and out["agreement"] == pytest.approx(2 / 3)
