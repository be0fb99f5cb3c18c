"""The built-in detection set: scenes of a few digits on a blank canvas, with their boxes
(detection's offline quick-start data: ``prepare.source: scenes``, data.prepare_detection).

Each scene places 1..``max_digits`` of the built-in 8x8 digits, upscaled by a whole factor, at
seeded positions that never overlap, so every box holds exactly one digit and its class is the
digit's. Generated, not stored: the same arguments give the same bytes on any machine (numpy's
PCG64 stream and integer-only image maths), and a few hundred scenes take milliseconds.
"""

from __future__ import annotations

import numpy as np

from shrinkflow.data.boxes import DetectionSplit, ImageBoxes
from shrinkflow.data.sources import Source, load_digits_source

MAX_TRIES = 50  # placements tried per digit before the scene keeps the digits it has


def _overlaps(box: tuple[int, int, int, int], taken: list[tuple[int, int, int, int]]) -> bool:
    x0, y0, x1, y1 = box
    return any(x0 < b[2] and b[0] < x1 and y0 < b[3] and b[1] < y1 for b in taken)


def make_digit_scenes(n: int, canvas: int = 64, max_digits: int = 4, scale: int = 2,
                      seed: int = 0, source: Source | None = None, part: int = 0,
                      rows: np.ndarray | None = None) -> tuple[np.ndarray, DetectionSplit]:
    """``n`` scenes as uint8 images ``(n, 1, canvas, canvas)`` and their boxes (pixels, x1 / y1
    exclusive) with the source's classes. ``source``: the built-in digits by default, or another
    grey-scale classification source (MNIST through ``sources.load_idx_source``), whose
    ``part`` the digits come from, only its ``rows`` if given: scenes of a held-apart test set
    take the source's test part, or rows no other split's scenes use."""
    source = source if source is not None else load_digits_source()
    part = source.parts[part]
    digits = np.concatenate(list(part.chunks()))[:, 0]  # (N, h, w) uint8, grey
    labels = part.labels
    if rows is not None:
        digits, labels = digits[rows], labels[rows]
    side = digits.shape[1] * scale
    if side > canvas:
        raise ValueError(f"a digit of {side} px does not fit a {canvas} px canvas")
    rng = np.random.default_rng(seed)
    images = np.zeros((n, 1, canvas, canvas), np.uint8)
    scenes = []
    for i in range(n):
        taken: list[tuple[int, int, int, int]] = []
        classes: list[int] = []
        for _ in range(int(rng.integers(1, max_digits + 1))):
            for _ in range(MAX_TRIES):
                x, y = (int(v) for v in rng.integers(0, canvas - side + 1, size=2))
                box = (x, y, x + side, y + side)
                if not _overlaps(box, taken):
                    break
            else:
                break
            k = int(rng.integers(len(digits)))
            images[i, 0, y:y + side, x:x + side] = np.kron(
                digits[k], np.ones((scale, scale), np.uint8))
            taken.append(box)
            classes.append(int(labels[k]))
        scenes.append(ImageBoxes(f"scene_{i:05d}.png", canvas, canvas,
                                 np.asarray(taken, np.float32).reshape(-1, 4),
                                 np.asarray(classes, np.int64)))
    return images, DetectionSplit(scenes, list(source.classes))
