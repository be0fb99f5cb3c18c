"""What ``shrinkflow-predict`` does with a detector (a ``.pt`` that ``train_teacher`` or
``distill`` wrote on detection data, or its ONNX file from ``export_onnx@NAME``, which needs no
torch): the boxes in each image, in the image's own pixels, as
text or JSON, and with ``--draw DIR`` each image with its boxes as ``DIR/<name>.png``.

An image is squashed to the detector's square input as ``prepare`` squashed the training images
(``data.images``), and the boxes are scaled back to the image's own size. Boxes scoring below
``--min-score`` are left out. Every image is decoded before the first prediction, and the drawn
PNGs appear together or not at all (``core.outputs``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from shrinkflow.core.errors import ShrinkflowError
from shrinkflow.core.outputs import commit_outputs
from shrinkflow.data.images import image_size, read_image
from shrinkflow.model_files.open import Model

COLOURS = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6",
           "#bfef45", "#fabed4", "#469990"]  # one per class, cycling


def detect(model: Model, files: list[Path], min_score: float) -> list[dict[str, Any]]:
    """Per file: its name, size and boxes (class, index, score, ``[x0, y0, x1, y1]`` in its own
    pixels), best first. ``model``: a detector from ``open_model`` (.pt, or the ONNX file of
    ``model_files.export_detector``)."""
    spec = model.spec
    side = spec["image_size"]
    images = [read_image(f, spec["in_channels"], side, side) for f in files]  # all checked first
    results = []
    for f, pixels in zip(files, images, strict=True):
        w, h = image_size(f)
        boxes, scores, labels = model.detect(pixels.astype(np.float32) / 255)
        scale = np.array([w / side, h / side] * 2)
        found = [{"class": spec["classes"][int(label)], "index": int(label),
                  "score": round(float(score), 4),
                  "box": [round(float(v), 1) for v in np.asarray(box) * scale]}
                 for box, score, label in zip(boxes, scores, labels, strict=True)
                 if score >= min_score]
        results.append({"file": str(f), "width": w, "height": h, "boxes": found})
    return results


def summary(result: dict[str, Any]) -> str:
    """One line: the file and its boxes, best first."""
    shown = " | ".join(f"{b['class']} {b['score']:.2f} [{', '.join(f'{v:g}' for v in b['box'])}]"
                       for b in result["boxes"])
    return f"{result['file']}: {len(result['boxes'])} box(es)" + (f": {shown}" if shown else "")


def draw(results: list[dict[str, Any]], out_dir: Path) -> list[Path]:
    """Each image in RGB with its boxes and labels, as ``out_dir/<file name>.png``."""
    stems = [Path(r["file"]).stem for r in results]
    twice = sorted({s for s in stems if stems.count(s) > 1})
    if twice:
        raise ShrinkflowError(f"--draw {out_dir}: several images are named {twice[0]!r}; "
                              "their drawings would overwrite each other (draw one folder at a "
                              "time)")
    written = []
    with commit_outputs() as out:
        for r in results:
            target = out_dir / f"{Path(r['file']).stem}.png"
            with Image.open(r["file"]) as im:
                canvas = im.convert("RGB")
            pen = ImageDraw.Draw(canvas)
            for b in r["boxes"]:
                colour = COLOURS[b["index"] % len(COLOURS)]
                pen.rectangle(b["box"], outline=colour, width=2)
                pen.text((b["box"][0] + 2, b["box"][1] + 1), f"{b['class']} {b['score']:.2f}",
                         fill=colour)
            canvas.save(out.file(target), format="PNG")
            written.append(target)
    return written
