"""``evaluate@NAME`` on detection data: the detector's COCO mAP on the test images
(``measure.detection_metrics``), its AP per class, and its boxes matched to the labelled ones as
a confusion list for DVC's confusion template, the three files classification's evaluation
writes (``measure.evaluate``), so the stage's outputs are the same for both tasks.

The confusion list: in each image, predictions scoring at least ``MIN_SCORE``, best first,
each take the unmatched labelled box they overlap most, at IoU >= ``MATCH_IOU``, whatever its
class: one row (actual class, predicted class). A prediction that matches nothing is
``background`` -> its class (a false detection); a labelled box that nothing matched is its
class -> ``background`` (a miss).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from shrinkflow.core.metric_keys import model_key
from shrinkflow.data.boxes import ImageBoxes
from shrinkflow.data.prepared_boxes import BoxSplit
from shrinkflow.measure.detection_metrics import detection_metrics

MIN_SCORE = 0.3  # a confident detection: the score shrinkflow-predict shows by default too
MATCH_IOU = 0.5  # COCO's loosest threshold, mAP@.5's
BACKGROUND = "background"


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box of ``a`` (N, 4) with every box of ``b`` (M, 4), corners x0 y0 x1 y1."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(axis=2)
    return inter / np.maximum(_area(a)[:, None] + _area(b)[None, :] - inter, 1e-12)


def _area(boxes: np.ndarray) -> np.ndarray:
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def confusion_rows(predictions: list[tuple[np.ndarray, ...]], truths: list[ImageBoxes],
                   classes: list[str]) -> list[dict[str, str]]:
    """(actual, predicted) per matched, missed or false box: the module docstring's rule."""
    rows = []
    for (boxes, scores, labels), truth in zip(predictions, truths, strict=True):
        keep = np.flatnonzero(np.asarray(scores) >= MIN_SCORE)
        keep = keep[np.argsort(-np.asarray(scores)[keep], kind="stable")]
        iou = box_iou(np.asarray(boxes)[keep], truth.boxes)
        taken = np.zeros(len(truth.boxes), bool)
        for row, k in enumerate(keep):
            free = np.where(taken, -1.0, iou[row]) if len(truth.boxes) else np.zeros(0)
            best = int(free.argmax()) if len(free) else -1
            predicted = classes[int(labels[k])]
            if best >= 0 and free[best] >= MATCH_IOU:
                taken[best] = True
                rows.append({"actual": classes[int(truth.labels[best])], "predicted": predicted})
            else:
                rows.append({"actual": BACKGROUND, "predicted": predicted})
        rows += [{"actual": classes[int(c)], "predicted": BACKGROUND}
                 for c in truth.labels[~taken]]
    return rows


def write_detection_evaluation(out: Any, metrics_dir: Path, name: str, model: Any,
                               test: BoxSplit, classes: list[str]) -> dict[str, Any]:
    """Evaluate a detector (``model_files.open``, ``model.detect``) on ``test`` and stage
    ``eval_NAME.json`` (keys ``NAME_*``), ``confusion_NAME.csv`` and ``per_class_NAME.csv`` in
    ``out``. Returns the mAP figures."""
    predictions = [model.detect(test.image(i)) for i in range(len(test))]
    truths = test.truths()
    m = detection_metrics(predictions, truths, classes)
    figures = {"map": m["map"], "map_50": m["map_50"], "map_75": m["map_75"],
               "params": model.params, "file_bytes": model.file_bytes,
               "test_images": len(test)}
    out.json(metrics_dir / f"eval_{name}.json",
             {model_key(name, field): value for field, value in figures.items()})
    out.csv(metrics_dir / f"confusion_{name}.csv", confusion_rows(predictions, truths, classes))
    support = np.bincount(test.labels, minlength=len(classes))
    out.csv(metrics_dir / f"per_class_{name}.csv", [
        {"class": c, "ap": m["ap_per_class"][c], "support": int(n)}
        for c, n in zip(classes, support, strict=True)])
    return m
