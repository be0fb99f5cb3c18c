"""The ``prepare`` stage's work after reading a source: split it into train/val/test (stratified,
seeded) and stream it into the prepared files that ``data.prepared`` reads back.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from shrinkflow.core.errors import ShrinkflowError
from shrinkflow.data.prepared import FORMAT, SPLITS
from shrinkflow.data.sources import Source, chunk_rows


def split_off(idx: np.ndarray, labels: np.ndarray, fraction: float,
               seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split ``idx`` into (rest, held out) with ``fraction`` held out, stratified by label when
    every class can have a member on both sides, seeded."""
    n_out = int(np.ceil(fraction * len(idx)))
    n_classes = len(np.unique(labels))
    counts = np.bincount(labels)
    enough = counts[counts > 0].min() >= 2 and n_classes <= min(n_out, len(idx) - n_out)
    stratify = labels if enough else None
    from sklearn.model_selection import train_test_split  # prepare only: see load_digits_source

    try:
        return train_test_split(idx, test_size=fraction, random_state=seed, stratify=stratify)
    except ValueError as exc:
        raise ShrinkflowError(f"cannot split {len(idx)} images with fraction {fraction}: {exc}"
                              ) from None


def split_indices(
    labels: np.ndarray, val_fraction: float, test_fraction: float, seed: int
) -> dict[str, np.ndarray]:
    """Pooled split: stratified train/val/test indices; same labels and seed, same split."""
    rest, test = split_off(np.arange(len(labels)), labels, test_fraction, seed)
    train, val = split_off(rest, labels[rest], val_fraction / (1 - test_fraction), seed)
    return {"train": np.sort(train), "val": np.sort(val), "test": np.sort(test)}


def source_split_indices(
    source: Source, val_fraction: float, seed: int, source_name: str = ""
) -> dict[str, np.ndarray]:
    """Keep the source's own test part as test; carve val out of its train part (stratified).

    Indices are positions in ``source.labels`` (parts concatenated in order).
    """
    names = [p.name for p in source.parts]
    if "test" not in names or "train" not in names:
        raise ShrinkflowError(
            f"prepare.split = 'source': the {source_name or 'configured'} source has no test "
            "split of its own (IDX t10k-* files, CIFAR test batches, or an image folder with "
            "train/ and test/ or val/); use prepare.split: auto or pooled"
        )
    offsets = np.cumsum([0] + [len(p.labels) for p in source.parts])
    ranges = {p.name: np.arange(offsets[i], offsets[i + 1]) for i, p in enumerate(source.parts)}
    train_labels = source.part("train").labels  # type: ignore[union-attr]
    train, val = split_off(ranges["train"], train_labels, val_fraction, seed)
    return {"train": np.sort(train), "val": np.sort(val), "test": ranges["test"]}


def resolve_split(source: Source, split: str) -> str:
    """``prepare.split: auto`` is ``source`` when the source has a train and a test part of its
    own (IDX t10k-*, CIFAR test, a folder with train/ + test/), else ``pooled`` (the digits).

    Resolved before anything is written, so meta.json names the split that was really made
    (the digits' stays "pooled", byte for byte)."""
    if split != "auto":
        return split
    names = {p.name for p in source.parts}
    return "source" if {"train", "test"} <= names else "pooled"


def make_splits(source: Source, split: str, val_fraction: float, test_fraction: float,
                seed: int, source_name: str = "") -> dict[str, np.ndarray]:
    """``prepare.split``: ``source`` keeps the source's test split, ``pooled`` re-splits all,
    ``auto`` picks between them (:func:`resolve_split`)."""
    split = resolve_split(source, split)
    if split == "source":
        return source_split_indices(source, val_fraction, seed, source_name)
    return split_indices(source.labels, val_fraction, test_fraction, seed)


def channel_stats(x: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean/std of uint8 images scaled to [0, 1].

    Sums of pixels and of their squares are exact integers, accumulated over small chunks: the
    result does not depend on chunking, and a float64 copy of a 32 MB chunk (270 MB) is avoided.
    """
    channels = x.shape[1]
    total = np.zeros(channels, dtype=np.int64)
    total_sq = np.zeros(channels, dtype=np.int64)
    rows = max(1, chunk_rows(x.shape[1:]) // 8)
    for start in range(0, len(x), rows):
        chunk = x[start : start + rows].astype(np.int64)
        total += chunk.sum(axis=(0, 2, 3))
        total_sq += (chunk * chunk).sum(axis=(0, 2, 3))
    count = max(len(x) * x.shape[2] * x.shape[3], 1)
    mean = total / count / 255
    std = np.sqrt(np.maximum(total_sq / count / 255**2 - mean**2, 0))
    return mean.round(6).tolist(), np.maximum(std, 1e-3).round(6).tolist()


def write_prepared(out_dir: Path, source: Source, splits: dict[str, np.ndarray],
                   source_name: str, split: str = "pooled") -> dict[str, Any]:
    """Stream the source into ``{split}_x.npy`` / ``_y.npy`` and meta.json in ``out_dir``.

    The caller swaps ``out_dir`` in atomically. Each streamed chunk is scattered straight to its
    rows in the memory-mapped outputs, so the whole dataset is never in memory twice.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    labels = source.labels
    dest_split = np.full(len(labels), -1, dtype=np.int8)
    dest_row = np.zeros(len(labels), dtype=np.int64)
    outputs = {}
    for s, name in enumerate(SPLITS):
        ix = splits[name]
        dest_split[ix], dest_row[ix] = s, np.arange(len(ix))
        outputs[name] = np.lib.format.open_memmap(
            out_dir / f"{name}_x.npy", mode="w+", dtype=np.uint8, shape=(len(ix), *source.shape))
        np.save(out_dir / f"{name}_y.npy", labels[ix])
    start = 0
    for part in source.parts:
        for chunk in part.chunks():
            if chunk.shape[1:] != tuple(source.shape):
                raise ShrinkflowError(f"{part.name} images have shape {chunk.shape[1:]}, "
                                      f"expected {source.shape}")
            where = slice(start, start + len(chunk))
            for s, name in enumerate(SPLITS):
                mask = dest_split[where] == s
                if mask.any():
                    outputs[name][dest_row[where][mask]] = chunk[mask]
            start += len(chunk)
    if start != len(labels):
        raise ShrinkflowError(f"the source gave {start} images for {len(labels)} labels")
    for out in outputs.values():
        out.flush()
    mean, std = channel_stats(outputs["train"])
    meta = {
        "format": FORMAT,
        "source": source_name,
        "source_sha256": source.sha256,
        "split": split,
        "classes": source.classes,
        "num_classes": len(source.classes),
        "shape": list(source.shape),
        "counts": {name: int(len(ix)) for name, ix in splits.items()},
        "mean": mean,
        "std": std,
        # image folders read with another policy than the original squash (data.images)
        **({"resize": source.resize} if source.resize != "squash" else {}),
    }
    del outputs
    (out_dir / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta
