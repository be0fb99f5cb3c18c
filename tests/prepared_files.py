"""Write an in-memory ``Prepared`` dataset to disk in the prepared format, through
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
