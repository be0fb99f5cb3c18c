"""Run a deployed model on image files: ``python -m shrinkflow.cli.predict MODEL PATH... [--top
K]``.

For each image (PATHs are files, or folders searched recursively for image files, sorted) it
prints the top K classes with their probabilities (softmax of the logits), using the class names
and preprocessing of the model's card (``shrinkflow.card``)::

    digits/3.png: 3 0.9812 | 8 0.0101 | 5 0.0040

``--json`` prints one JSON object per image instead (file, and the top classes with index, name
and probability), for scripts.

A detector (a detection ``.pt``, ``prepare.task: detection``) gives the boxes of each image
instead, in the image's own pixels, above ``--min-score``; ``--draw DIR`` writes each image with
its boxes to ``DIR/<name>.png`` (``shrinkflow.cli.detect``).

With an ONNX model this needs only onnxruntime, numpy and Pillow: no torch, no DVC (the card is
read through ONNX Runtime's metadata; tests/unit/cli/test_predict.py runs it with ``import torch``
failing). A ``.pt`` model needs torch. Both open through ``shrinkflow.model_files.open``, the one
opener, which checks a ``.pt`` file against its tensors before building anything: a hostile file
whose spec asks for a huge network is one line, not gigabytes (docs/bad-input.md).

Preprocessing, as the card says and as ``prepare`` did to image files: the one image policy of
``shrinkflow.data.images`` (mode conversion to the model's ``L`` or ``RGB``, 16-bit greyscale
scaled to 8 bits, other pixel kinds and decompression bombs refused, then the card's resize:
``bilinear`` squash, ``center_crop`` or ``letterbox`` to the model's height x width), 8-bit
pixels divided by 255; mean/std normalisation happens inside shrinkflow models.

Bad input (a missing file, a file that is not an image, an image of the wrong kind, a model
without a card, an unknown model suffix) stops the command before any prediction with one line,
``error: FILE: ...``, exit code 2. Every image is decoded (and kept at the model's size) before
the first prediction, so a damaged image late in a folder still stops the run before any output.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from shrinkflow.core.errors import ShrinkflowError, run_stage
from shrinkflow.data.images import policy_from_card, read_image
from shrinkflow.model_files.card import card_from_onnx_metadata, card_from_pt_meta
from shrinkflow.model_files.open import Model, Runtime, open_model

BATCH_SIZE = 64  # images per model call: bounds memory on large folders


@dataclass
class Deployed:
    """A model file opened by the one opener (``open_model``), with its card."""

    model: Model
    card: dict[str, Any]

    def run(self, x: np.ndarray) -> np.ndarray:
        return self.model.run_numpy(x)


def with_card(model: Model) -> Deployed:
    """An opened model (``open_model``) with its card; one line naming the file when the card is
    bad or not this model's.

    ``check_card`` bounds the card's image sides (``card.MAX_SIDE``): every image is resized to
    them, so a hostile card cannot make each image gigabytes."""
    card = (card_from_onnx_metadata(model.meta, model.path)
            if model.runtime is Runtime.ONNXRUNTIME else card_from_pt_meta(model.meta, model.path))
    _check_model_fits_card(model, card)
    return Deployed(model, card)


def _check_model_fits_card(model: Model, card: dict[str, Any]) -> None:
    """A card copied onto another model would mislabel every prediction: check it fits."""
    s = card["input"]
    want = (s["channels"], s["height"], s["width"])
    if any(h is not None and h != w for h, w in zip(model.input_shape, want, strict=True)):
        shown = "x".join("?" if d is None else str(d) for d in model.input_shape)
        raise ShrinkflowError(f"{model.path}: the model takes {shown} images but its card says "
                              f"{'x'.join(map(str, want))}: the card is not this model's")
    classes = len(card["classes"])
    if model.num_classes is not None and model.num_classes != classes:
        raise ShrinkflowError(f"{model.path}: the model predicts {model.num_classes} classes but "
                              f"its card names {classes}: the card is not this model's")


# --- images ------------------------------------------------------------------------------------


def image_files(paths: Sequence[str | Path]) -> list[Path]:
    """Files as given, folders expanded to their image files (recursively, sorted by path).

    In a folder only files with a suffix Pillow opens are taken (a README beside the images is
    not an error); a file named explicitly must be an image.
    """
    suffixes = {s.lower() for s in Image.registered_extensions()}
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in suffixes)
            if not found:
                raise ShrinkflowError(f"{p}/: no image files in this folder")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise ShrinkflowError(f"{p}: no such file or folder")
    return files


def load_image(path: Path, card: dict[str, Any]) -> np.ndarray:
    """One image as the model's uint8 (C, H, W), by the one image policy (``data.images``) with
    the card's resize; one line naming the file when it cannot be."""
    s = card["input"]
    policy = policy_from_card(card["preprocessing"].get("resize", "bilinear"), "model card")
    return read_image(path, s["channels"], s["height"], s["width"], policy)


def to_input(images: np.ndarray, card: dict[str, Any]) -> np.ndarray:
    """uint8 (N, C, H, W) -> the float32 batch the model takes (the card's scaling, and mean/std
    when the model does not normalise itself)."""
    pre = card["preprocessing"]
    x = images.astype(np.float32) / np.float32(pre["divide_by"])
    if not pre["normalize_in_model"]:
        mean = np.asarray(pre["mean"], dtype=np.float32).reshape(1, -1, 1, 1)
        std = np.asarray(pre["std"], dtype=np.float32).reshape(1, -1, 1, 1)
        x = (x - mean) / std
    return np.ascontiguousarray(x)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def predict(model: Deployed, images: np.ndarray) -> np.ndarray:
    """Class probabilities (N, classes) of uint8 images, ``BATCH_SIZE`` at a time."""
    out = [softmax(model.run(to_input(images[i : i + BATCH_SIZE], model.card)))
           for i in range(0, len(images), BATCH_SIZE)]
    return np.concatenate(out) if out else np.zeros((0, len(model.card["classes"])))


# --- command line ------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="shrinkflow-predict",
        description="Top classes of each image by a shrinkflow model (.onnx: needs only "
                    "onnxruntime, numpy and Pillow) and its model card.")
    parser.add_argument("model", type=Path, help="model file, e.g. models/final/model.onnx")
    parser.add_argument("paths", nargs="+", type=Path, help="image files or folders")
    parser.add_argument("--top", type=int, default=3, metavar="K",
                        help="classes shown per image (default 3)")
    parser.add_argument("--json", action="store_true", help="one JSON object per image")
    parser.add_argument("--min-score", type=float, default=0.3, metavar="S",
                        help="a detector: boxes scoring at least S (default 0.3)")
    parser.add_argument("--draw", type=Path, default=None, metavar="DIR",
                        help="a detector: write each image with its boxes as DIR/<name>.png")
    return parser.parse_args(argv)


def main_detection(args: argparse.Namespace, model: Model) -> None:
    """A detector's boxes per image (cli.detect); drawings with ``--draw``."""
    from shrinkflow.cli import detect

    if not 0 <= args.min_score <= 1:
        raise ShrinkflowError(f"--min-score {args.min_score}: expected a score in 0..1")
    results = detect.detect(model, image_files(args.paths), args.min_score)
    if args.draw is not None:
        detect.draw(results, args.draw)
    for r in results:
        print(json.dumps(r) if args.json else detect.summary(r))


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.top < 1:
        raise ShrinkflowError(f"--top {args.top}: expected a positive number of classes")
    opened = open_model(args.model)
    if opened.detect is not None:
        main_detection(args, opened)
        return
    if args.draw is not None:
        raise ShrinkflowError(f"--draw: boxes come from a detector; {args.model} is a "
                              "classifier")
    # every input is checked (model, card, each image decoded) before the first prediction
    model = with_card(opened)
    files = image_files(args.paths)
    images = np.stack([load_image(f, model.card) for f in files])
    classes = model.card["classes"]
    k = min(args.top, len(classes))
    for start in range(0, len(files), BATCH_SIZE):
        probs = predict(model, images[start : start + BATCH_SIZE])
        for f, p in zip(files[start : start + BATCH_SIZE], probs, strict=True):
            top = np.argsort(-p, kind="stable")[:k]
            if args.json:
                print(json.dumps({"file": str(f), "top": [
                    {"index": int(i), "class": classes[i], "prob": round(float(p[i]), 6)}
                    for i in top]}))
            else:
                print(f"{f}: " + " | ".join(f"{classes[i]} {p[i]:.4f}" for i in top))


def cli(argv: Sequence[str] | None = None) -> None:
    """Entry point (``shrinkflow-predict``): bad input is one ``error:`` line, exit code 2."""
    run_stage(lambda: main(argv))


if __name__ == "__main__":
    cli(sys.argv[1:])
