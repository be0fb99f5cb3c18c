"""Detection's prepared data (what ``prepare`` writes for ``prepare.task: detection``): images
and boxes written once, read back memory-mapped, so training neither decodes images nor parses
annotation files every epoch.

Per split, four arrays: ``{split}_x.npy`` the uint8 images ``(N, C, H, W)`` (one size: scenes,
or photos resized when prepared), ``{split}_boxes.npy`` every box ``(M, 4)`` float32 pixels
``x0, y0, x1, y1``, ``{split}_labels.npy`` their class indices ``(M,)`` and
``{split}_offsets.npy`` ``(N + 1,)``: image ``i``'s boxes are rows ``offsets[i]:offsets[i + 1]``
(a ragged list as flat arrays, so it maps from disk like the images). ``meta.json`` names the
format, the classes and the shape.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shrinkflow.core.errors import ShrinkflowError
from shrinkflow.data.boxes import DetectionSplit, ImageBoxes
from shrinkflow.data.prepared import DETECTION_FORMAT, read_meta


@dataclass
class BoxSplit:
    """One prepared split: images memory-mapped, boxes as flat arrays with per-image offsets."""

    images: np.ndarray  # (N, C, H, W) uint8
    boxes: np.ndarray  # (M, 4) float32
    labels: np.ndarray  # (M,) int64
    offsets: np.ndarray  # (N + 1,) int64

    def __len__(self) -> int:
        return len(self.images)

    def target(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Image ``i``'s boxes and class indices."""
        start, end = self.offsets[i], self.offsets[i + 1]
        return self.boxes[start:end], self.labels[start:end]

    def image(self, i: int) -> np.ndarray:
        """Image ``i`` as a detector takes it: float32 ``(C, H, W)`` in [0, 1]."""
        return np.asarray(self.images[i], np.float32) / 255

    def truths(self) -> list[ImageBoxes]:
        """Every image's labelled boxes, in order: what mAP is measured against."""
        return [ImageBoxes("", 0, 0, *self.target(i)) for i in range(len(self))]


def write_box_split(out_dir: Path, name: str, images: np.ndarray, split: DetectionSplit) -> None:
    """Write split ``name``: ``images`` (N, C, H, W) uint8 and ``split``'s boxes, in order."""
    if len(images) != len(split.images):
        raise ValueError(f"{len(images)} images for {len(split.images)} annotated images")
    counts = [len(s.boxes) for s in split.images]
    np.save(out_dir / f"{name}_x.npy", np.ascontiguousarray(images, np.uint8))
    np.save(out_dir / f"{name}_boxes.npy",
            np.concatenate([s.boxes for s in split.images] or [np.zeros((0, 4))])
            .astype(np.float32).reshape(-1, 4))
    np.save(out_dir / f"{name}_labels.npy",
            np.concatenate([s.labels for s in split.images] or [np.zeros(0)]).astype(np.int64))
    np.save(out_dir / f"{name}_offsets.npy", np.concatenate([[0], np.cumsum(counts)])
            .astype(np.int64))


def write_box_meta(out_dir: Path, classes: list[str], shape: list[int], splits: list[str],
                   **extra: Any) -> dict[str, Any]:
    """meta.json: the format, classes, image shape and splits, plus ``extra`` (counts, the
    normalisation); returns what it wrote."""
    meta = {"format": DETECTION_FORMAT, "classes": classes, "num_classes": len(classes),
            "shape": shape, "splits": splits, **extra}
    (out_dir / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def load_box_split(data_dir: str | Path, name: str) -> tuple[BoxSplit, dict[str, Any]]:
    """Open split ``name`` of what ``write_box_split`` wrote, images mapped copy-on-write,
    checked to be one consistent set (a file from another run names itself in one line)."""
    data_dir = Path(data_dir)
    meta = read_meta(data_dir, DETECTION_FORMAT)
    try:
        images = np.load(data_dir / f"{name}_x.npy", mmap_mode="c")
        boxes, labels, offsets = (np.load(data_dir / f"{name}_{part}.npy")
                                  for part in ("boxes", "labels", "offsets"))
    except (OSError, ValueError) as exc:
        raise ShrinkflowError(f"{data_dir}/{name}_*.npy: unreadable ({exc}); run "
                              "`dvc repro prepare -f`") from None
    problem = None
    if offsets.shape != (len(images) + 1,) or offsets[0] != 0 or np.any(np.diff(offsets) < 0):
        problem = (f"{name}_offsets.npy: expected {len(images) + 1} non-decreasing offsets "
                   f"from 0 (one per image of {name}_x.npy, plus one)")
    elif not (offsets[-1] == len(boxes) == len(labels)) or boxes.shape[1:] != (4,):
        problem = (f"{name}_boxes.npy / {name}_labels.npy: expected {offsets[-1]} boxes of 4 "
                   f"numbers and as many labels, got {boxes.shape} and {labels.shape}")
    elif len(labels) and not (0 <= labels.min() and labels.max() < len(meta["classes"])):
        problem = (f"{name}_labels.npy: class indices must lie in 0..{len(meta['classes']) - 1} "
                   "(meta.json's classes)")
    if problem:
        raise ShrinkflowError(f"{data_dir}/{problem}; run `dvc repro prepare -f`")
    return BoxSplit(images, boxes, labels, offsets), meta
