"""Reading the prepared dataset back: what every training, evaluation and export stage opens.

``prepare`` writes ``{train,val,test}_x.npy`` (uint8 images) + ``_y.npy`` (int64 labels) and
``meta.json``; this module maps them copy-on-write, so peak RSS stays near one batch and not the
whole set. Its own module, apart from the sources and the split, so that a change to how a source
is read reruns ``prepare`` only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from shrinkflow.core.errors import ShrinkflowError
from shrinkflow.core.tasks import CLASSIFICATION, DETECTION, meta_task

SPLITS = ("train", "val", "test")

FORMAT = "shrinkflow-prepared/2"
DETECTION_FORMAT = "shrinkflow-detection/1"  # data.prepared_boxes
# each task's prepared format; a detection meta.json also names its task
FORMAT_TASKS = {FORMAT: CLASSIFICATION, DETECTION_FORMAT: DETECTION}


@dataclass
class Prepared:
    """The prepared splits as (uint8 images, int64 labels) tensors, memory-mapped from disk."""

    train: tuple[torch.Tensor, torch.Tensor]
    val: tuple[torch.Tensor, torch.Tensor]
    test: tuple[torch.Tensor, torch.Tensor]
    meta: dict[str, Any]

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.meta["shape"])  # type: ignore[return-value]


def read_meta(data_dir: Path, expected_format: str) -> dict[str, Any]:
    """A prepared folder's meta.json, checked to be ``expected_format`` before any array is
    opened: the check every prepared-data reader makes (classification's here, detection's in
    ``data.prepared_boxes``)."""
    meta_path = data_dir / "meta.json"
    if not meta_path.is_file():
        raise ShrinkflowError(f"{meta_path}: not found (run the prepare stage first)")
    meta = json.loads(meta_path.read_text())
    found, wanted = meta_task(meta), FORMAT_TASKS.get(expected_format)
    if meta.get("format") != expected_format and found != wanted:
        raise ShrinkflowError(f"{data_dir}: holds {found} data (prepare.task: {found}); this "
                              f"stage reads {wanted} data. Set prepare.task and prepare.source "
                              "for the models you train (docs/data.md)")
    if meta.get("format") != expected_format:
        raise ShrinkflowError(f"{data_dir}: prepared by another shrinkflow version or task "
                              f"(format {meta.get('format')!r}, expected {expected_format}); "
                              "run `dvc repro prepare -f`")
    return meta


def load_prepared(data_dir: str | Path) -> Prepared:
    """Open what ``prepare`` wrote: memory-mapped uint8 images, int64 labels, the meta dict.

    Images are mapped copy-on-write (``mmap_mode="c"``): nothing is read until a batch gathers
    it, and torch gets a writable array without a copy. Nobody writes to them.
    """
    data_dir = Path(data_dir)
    meta = read_meta(data_dir, FORMAT)
    splits = []
    for name in SPLITS:
        try:
            x = np.load(data_dir / f"{name}_x.npy", mmap_mode="c")
            y = np.load(data_dir / f"{name}_y.npy")
        except (OSError, ValueError) as exc:
            raise ShrinkflowError(f"{data_dir}/{name}_*.npy: unreadable ({exc}); run "
                                  "`dvc repro prepare -f`") from None
        splits.append((torch.from_numpy(x), torch.from_numpy(y)))
    return Prepared(*splits, meta=meta)
