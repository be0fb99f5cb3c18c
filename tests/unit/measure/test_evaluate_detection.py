"""Detection's evaluation (measure.evaluate_detection): IoU and the matched-box confusion list
on hand-built cases."""

from __future__ import annotations

import numpy as np
import pytest

from shrinkflow.data.boxes import ImageBoxes
from shrinkflow.measure.evaluate_detection import box_iou, confusion_rows

CLASSES = ["a", "b"]


def test_box_iou_by_hand():
    iou = box_iou([[0, 0, 2, 2], [10, 10, 11, 11]], [[1, 1, 3, 3], [0, 0, 2, 2]])
    assert iou[0, 0] == pytest.approx(1 / 7)  # overlap 1, union 4 + 4 - 1
    assert iou[0, 1] == 1.0 and iou[1].max() == 0.0


def predictions(boxes, scores, labels):
    return (np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(scores, np.float32),
            np.asarray(labels, np.int64))


def test_matches_misses_and_false_detections():
    truth = ImageBoxes("", 20, 20, np.asarray([[0, 0, 4, 4], [10, 10, 14, 14]], np.float32),
                       np.asarray([0, 1]))
    found = predictions(
        [[0, 0, 4, 4.2],     # a's box, called b: a confusion
         [0, 0, 4, 4],       # a's box again, lower score: the box is taken, a false detection
         [15, 0, 19, 4],     # nothing there: a false detection
         [10, 10, 14, 14]],  # b's box, but below MIN_SCORE: not shown, so b is missed
        [0.9, 0.8, 0.5, 0.1], [1, 0, 0, 1])
    rows = [(r["actual"], r["predicted"]) for r in confusion_rows([found], [truth], CLASSES)]
    assert rows == [("a", "b"), ("background", "a"), ("background", "a"), ("b", "background")]


def test_an_image_without_labels_or_predictions_adds_nothing_unexpected():
    empty = ImageBoxes("", 8, 8)
    assert confusion_rows([predictions([], [], [])], [empty], CLASSES) == []
    rows = confusion_rows([predictions([[0, 0, 2, 2]], [0.9], [1])], [empty], CLASSES)
    assert rows == [{"actual": "background", "predicted": "b"}]
