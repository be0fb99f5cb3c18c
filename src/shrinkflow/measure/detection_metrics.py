"""COCO mAP of a detector's boxes: what the detection training loop validates with and the
detection stages report (``training.detection_loop``).

torchmetrics' ``MeanAveragePrecision`` on its pycocotools backend computes the figures, so they
are the COCO evaluation's own (101-point interpolated precision, IoU thresholds .50:.05:.95, up
to 100 detections per image), not a hand-written approximation. Boxes are ``(x0, y0, x1, y1)``
pixels, the form ``shrinkflow.data.boxes`` reads annotations into.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from shrinkflow.data.boxes import ImageBoxes


def _as_tensors(boxes: np.ndarray, labels: np.ndarray) -> dict[str, torch.Tensor]:
    return {"boxes": torch.as_tensor(np.asarray(boxes, np.float32).reshape(-1, 4)),
            "labels": torch.as_tensor(np.asarray(labels, np.int64).reshape(-1))}


def detection_metrics(
    predictions: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
    targets: Sequence[ImageBoxes],
    classes: list[str],
) -> dict[str, Any]:
    """mAP@[.5:.95] (``map``), mAP@.5 (``map_50``), mAP@.75 (``map_75``) and the AP of each class
    (``ap_per_class``: class name -> AP, None for a class with no box in ``targets``), all as
    fractions. ``predictions`` holds per image, in the order of ``targets``, its boxes (N, 4),
    scores (N,) and class indices (N,)."""
    from torchmetrics.detection import MeanAveragePrecision  # ~1.5 s import: detection only

    if len(predictions) != len(targets):
        raise ValueError(f"{len(predictions)} predictions for {len(targets)} images")
    metric = MeanAveragePrecision(box_format="xyxy", iou_type="bbox", class_metrics=True,
                                  backend="pycocotools")
    preds = [{**_as_tensors(boxes, labels),
              "scores": torch.as_tensor(np.asarray(scores, np.float32).reshape(-1))}
             for boxes, scores, labels in predictions]
    metric.update(preds, [_as_tensors(t.boxes, t.labels) for t in targets])
    result = metric.compute()
    # classes present in targets or predictions, in the order map_per_class lists them
    present = np.atleast_1d(result["classes"].numpy()).tolist()
    per_class = np.atleast_1d(result["map_per_class"].numpy()).tolist()
    ap = dict(zip(present, per_class, strict=True))
    return {
        "map": round(float(result["map"]), 6),
        "map_50": round(float(result["map_50"]), 6),
        "map_75": round(float(result["map_75"]), 6),
        "ap_per_class": {name: (None if ap.get(i, -1.0) < 0 else round(ap[i], 6))
                         for i, name in enumerate(classes)},
    }
