"""Small models the pruning tests share (test_prune.py, test_prune_budget.py)."""

from __future__ import annotations

import torch
from torch import nn

from shrinkflow.nets.zoo import build_model
from shrinkflow.params.prune import PruneParams

SHAPE = (3, 8, 8)


def spec_for(arch: str, channels: int = 3, classes: int = 4) -> dict:
    return {
        "arch": arch, "widths": [8, 16, 32], "depth": 2, "width_mult": 0.5,
        "in_channels": channels, "num_classes": classes,
        "mean": [0.3] * channels, "std": [0.3] * channels,
    }


def fresh(arch: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(spec_for(arch)).eval()


def quiet(_: str) -> None:
    pass


def params(**kw) -> PruneParams:
    """Exact ratios (round_to=1): the tiny test models have fewer channels than 8. One step at
    ratio 0.5 unless a test says otherwise (no fine-tune: these tests pass no callback)."""
    kw.setdefault("round_to", 1)
    kw.setdefault("ratio", 0.5)
    kw.setdefault("iterative_steps", 1)
    return PruneParams(sensitivity=False, **kw)
