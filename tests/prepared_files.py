"""Tiny synthetic datasets (``make_prepared``: separable enough that a few steps of training beat
chance), and writing a ``Prepared`` to disk in the prepared format through
``shrinkflow.data.write_prepared`` (so tests never hand-write the file layout)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from shrinkflow.data.prepare import write_prepared
from shrinkflow.data.prepared import Prepared
from shrinkflow.data.sources import source_from_arrays


def write_prepared_dir(out_dir: Path, prepared: Prepared) -> dict:
    """Write ``prepared``'s train/val/test splits to ``out_dir`` exactly as given; returns meta.

    mean/std in the written meta are computed from the train split, as ``prepare`` does.
    """
    parts = [prepared.train, prepared.val, prepared.test]
    images = torch.cat([x for x, _ in parts]).numpy()
    labels = torch.cat([y for _, y in parts]).numpy()
    bounds = np.cumsum([0] + [len(y) for _, y in parts])
    splits = {name: np.arange(bounds[i], bounds[i + 1])
              for i, name in enumerate(("train", "val", "test"))}
    source = source_from_arrays(images, labels, list(prepared.meta["classes"]))
    return write_prepared(Path(out_dir), source, splits, "synthetic")


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
