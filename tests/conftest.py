"""Shared tiny synthetic data: separable enough that a few steps of training beat chance."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from shrinkflow.data import Prepared


def make_split(n: int, channels: int = 1, size: int = 8, classes: int = 4, seed: int = 0):
    """Class k lights up the k-th horizontal band of the image, plus noise (uint8 images)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    x = rng.integers(0, 60, (n, channels, size, size)).astype(np.float64)
    band = size // classes
    for i, k in enumerate(y):
        x[i, :, k * band : (k + 1) * band, :] += 180
    return torch.from_numpy(x.clip(0, 255).astype(np.uint8)), torch.from_numpy(y.astype(np.int64))


def make_prepared(channels: int = 1, size: int = 8, classes: int = 4) -> Prepared:
    meta = {
        "source": "synthetic",
        "classes": [str(c) for c in range(classes)],
        "num_classes": classes,
        "shape": [channels, size, size],
        "counts": {"train": 256, "val": 64, "test": 64},
        "mean": [0.3] * channels,
        "std": [0.3] * channels,
    }
    return Prepared(
        train=make_split(256, channels, size, classes, seed=0),
        val=make_split(64, channels, size, classes, seed=1),
        test=make_split(64, channels, size, classes, seed=2),
        meta=meta,
    )


@pytest.fixture
def tiny_data() -> Prepared:
    torch.manual_seed(0)
    return make_prepared()


@pytest.fixture(autouse=True)
def _one_thread():
    """Keep unit tests deterministic and light on a 2-core machine."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
