"""The ``prepare`` stage's work for detection (``prepare.task: detection``): read the built-in
digit scenes, a COCO folder or a Pascal VOC folder, check every box, and write the prepared box
arrays that ``data.prepared_boxes`` maps back.

Layouts (``prepare.path``):

- ``scenes``: scenes of the built-in digits (``prepare.path`` left at the digits' note), or of an
  IDX folder's digits (MNIST: ``data/raw/mnist``). Test scenes use only digits that no training
  or validation scene uses: the source's own test part when it has one, else a stratified
  ``test_fraction`` of the digits. Grey, one channel.
- ``coco``: ``train.json`` (COCO instances) with its images in ``train/``; ``val.json`` +
  ``val/`` and ``test.json`` + ``test/`` if you have them. A split without its files is carved
  from train's images (``val_fraction``, ``test_fraction``), seeded.
- ``voc``: ``Annotations/*.xml`` with the images in ``JPEGImages/``; val and test are carved
  from the images (VOC's ImageSets lists are not read).

Images are squashed to ``image_size`` x ``image_size`` and their boxes scaled with them. An
image whose real size differs from its annotation's, or that cannot be read, is one line naming
it; all of a split's bad files are reported together, before anything is written.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from shrinkflow.core.errors import ShrinkflowError
from shrinkflow.data.boxes import DetectionSplit, ImageBoxes, raise_if_bad, read_coco, read_voc
from shrinkflow.data.digit_scenes import make_digit_scenes
from shrinkflow.data.images import image_size, read_image
from shrinkflow.data.prepare import channel_stats, split_indices, split_off
from shrinkflow.data.prepared import SPLITS
from shrinkflow.data.prepared_boxes import write_box_meta, write_box_split
from shrinkflow.data.sources import load_digits_source, load_idx_source
from shrinkflow.params.prepare import DIGITS_PLACEHOLDER, PrepareParams

Splits = dict[str, tuple[np.ndarray, DetectionSplit]]  # split name -> (images, their boxes)


def check_detection_source(p: PrepareParams) -> None:
    """Fail before any output is touched when the source's folder is missing."""
    if p.source == "scenes" and p.path == DIGITS_PLACEHOLDER:
        return
    if not Path(p.path).is_dir():
        raise ShrinkflowError(f"prepare.path = {p.path!r}: no such directory (source "
                              f"{p.source!r}, docs/data.md)")


def scene_splits(p: PrepareParams) -> Splits:
    """The three splits of digit scenes, each from its own digits and seed."""
    source = (load_digits_source() if p.path == DIGITS_PLACEHOLDER
              else load_idx_source(Path(p.path)))
    names = [part.name for part in source.parts]
    if "train" in names and "test" in names:  # IDX: its t10k digits make the test scenes
        train_part = names.index("train")
        labels = source.parts[train_part].labels
        rest, val = split_off(np.arange(len(labels)), labels, p.val_fraction, p.seed)
        pools = {"train": (train_part, np.sort(rest)), "val": (train_part, np.sort(val)),
                 "test": (names.index("test"), None)}
    else:
        ix = split_indices(source.parts[0].labels, p.val_fraction, p.test_fraction, p.seed)
        pools = {name: (0, ix[name]) for name in SPLITS}
    s = p.scenes
    return {name: make_digit_scenes(getattr(s, name), canvas=p.image_size,
                                    max_digits=s.max_digits, scale=s.digit_scale,
                                    seed=p.seed + k, source=source, part=part, rows=rows)
            for k, (name, (part, rows)) in enumerate(pools.items())}


def annotated_splits(p: PrepareParams) -> dict[str, tuple[Path, DetectionSplit]]:
    """Each split's image folder and annotations. Every split's annotation files use the same
    categories, in the same order (train's)."""
    root = Path(p.path)
    if p.source == "voc":
        pooled = {"all": (root / "JPEGImages", read_voc(root))}
    else:
        found = {name: (root / name, read_coco(root / f"{name}.json")) for name in SPLITS
                 if (root / f"{name}.json").is_file()}
        if "train" not in found:
            raise ShrinkflowError(f"prepare.path = {p.path!r}: expected train.json (COCO "
                                  "instances) and its images in train/ (docs/data.md)")
        pooled = found
    classes = next(iter(pooled.values()))[1].classes
    for name, (_, split) in pooled.items():
        if split.classes != classes:
            raise ShrinkflowError(f"{root}/{name}.json: categories {split.classes} differ "
                                  f"from train.json's {classes}; expected the same list")
    return _carve_missing(pooled, p)


def _carve_missing(pooled: dict[str, tuple[Path, DetectionSplit]], p: PrepareParams
                   ) -> dict[str, tuple[Path, DetectionSplit]]:
    """Val and test carved from the first split's images where their files are absent."""
    first_name = next(iter(pooled))
    folder, first = pooled[first_name]
    want = [name for name in ("test", "val") if name not in pooled]
    order = np.random.default_rng(p.seed).permutation(len(first.images))
    fractions = {"test": p.test_fraction, "val": p.val_fraction}
    taken, out = 0, {}
    for name in want:
        n = max(1, int(np.ceil(fractions[name] * len(order))))
        out[name] = (folder, _subset(first, order[taken:taken + n]))
        taken += n
    if len(order) - taken < 1:
        raise ShrinkflowError(f"{folder}: {len(order)} annotated images cannot make train, "
                              "val and test; add images or lower the fractions")
    out["train"] = (folder, _subset(first, order[taken:]))
    for name in SPLITS:
        if name in pooled and name != first_name:
            out[name] = pooled[name]
    return out


def _subset(split: DetectionSplit, rows: np.ndarray) -> DetectionSplit:
    return DetectionSplit([split.images[i] for i in np.sort(rows)], split.classes)


def read_split_images(folder: Path, split: DetectionSplit, size: int, channels: int
                      ) -> tuple[np.ndarray, DetectionSplit, list[str]]:
    """The split's images squashed to ``size`` px, its boxes scaled with them, and one line per
    image whose file is missing, unreadable or of another size than its annotation says."""
    images = np.zeros((len(split.images), channels, size, size), np.uint8)
    scaled, problems = [], []
    for i, image in enumerate(split.images):
        path = folder / image.file
        problem = _size_problem(path, image)
        if problem is None:
            try:
                images[i] = read_image(path, channels, size, size)
            except ShrinkflowError as exc:
                problem = str(exc)
        if problem:
            problems.append(problem)
            continue
        scale = np.array([size / image.width, size / image.height] * 2, np.float32)
        scaled.append(replace(image, boxes=image.boxes * scale, width=size, height=size))
    return images, DetectionSplit(scaled, split.classes), problems


def _size_problem(path: Path, image: ImageBoxes) -> str | None:
    if not path.is_file():
        return f"{path}: not found (named by the annotations)"
    try:
        size = image_size(path)
    except ShrinkflowError as exc:
        return str(exc)
    if size != (image.width, image.height):
        return (f"{path}: {size[0]}x{size[1]} pixels, but its annotation says "
                f"{image.width}x{image.height}; expected the same size")
    return None


def read_detection(p: PrepareParams) -> Splits:
    """Every split's images and boxes, read and checked: nothing is written yet."""
    if p.source == "scenes":
        return scene_splits(p)
    annotated = annotated_splits(p)
    read = {name: read_split_images(folder, split, p.image_size, p.channels)
            for name, (folder, split) in annotated.items()}
    raise_if_bad(Path(p.path), [line for *_, problems in read.values() for line in problems])
    return {name: (images, split) for name, (images, split, _) in read.items()}


def write_detection(out_dir: Path, splits: Splits, source: str) -> dict[str, Any]:
    """Write the splits and meta.json into ``out_dir`` (the caller swaps it in atomically);
    returns the meta."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in SPLITS:
        write_box_split(out_dir, name, *splits[name])
    images, train = splits["train"]
    mean, std = channel_stats(images)
    extra = {"task": "detection", "source": source,
             "counts": {name: len(splits[name][0]) for name in SPLITS},
             "boxes": {name: sum(len(i.boxes) for i in splits[name][1].images) for name in SPLITS},
             "mean": mean, "std": std}
    return write_box_meta(out_dir, train.classes, list(images.shape[1:]), list(SPLITS), **extra)
