"""Detection's COCO mAP (shrinkflow.measure.detection_metrics) on cases computed by hand."""

import numpy as np
import pytest

from shrinkflow.data.boxes import ImageBoxes
from shrinkflow.measure.detection_metrics import detection_metrics

CLASSES = ["zero", "one"]


def image(*boxes_labels) -> ImageBoxes:
    boxes = np.array([b for b, _ in boxes_labels], np.float32).reshape(-1, 4)
    return ImageBoxes("x.png", 32, 32, boxes, np.array([c for _, c in boxes_labels], np.int64))


def pred(*boxes_scores_labels):
    rows = list(boxes_scores_labels)
    return (np.array([r[0] for r in rows], np.float32).reshape(-1, 4),
            np.array([r[1] for r in rows], np.float32), np.array([r[2] for r in rows], np.int64))


def test_a_box_at_iou_062_counts_at_three_of_the_ten_thresholds():
    # ground truth 10x10 (area 100); the prediction covers its top 6.2 rows: IoU 62/100 = 0.62,
    # a match at IoU .50, .55 and .60 and a miss at .65 ... .95: mAP 3/10, mAP@.5 1, mAP@.75 0
    m = detection_metrics([pred(([0, 0, 10, 6.2], 0.9, 0))], [image(([0, 0, 10, 10], 0))],
                          CLASSES)
    assert (m["map"], m["map_50"], m["map_75"]) == (pytest.approx(0.3), 1.0, 0.0)
    assert m["ap_per_class"] == {"zero": pytest.approx(0.3), "one": None}  # no box of "one"


def test_a_missed_box_halves_recall_101_point_precision():
    # two boxes, one found exactly: precision 1 up to recall 0.5, none beyond; COCO averages
    # precision at the 101 recalls 0, .01, ..., 1: 51 of them count, AP = 51/101
    m = detection_metrics([pred(([0, 0, 10, 10], 0.9, 0)), pred()],
                          [image(([0, 0, 10, 10], 0)), image(([5, 5, 20, 20], 0))], CLASSES)
    assert m["map"] == pytest.approx(51 / 101, abs=1e-6)


def test_a_right_box_of_the_wrong_class_is_no_match():
    m = detection_metrics([pred(([0, 0, 10, 10], 0.9, 1))],
                          [image(([0, 0, 10, 10], 0), ([12, 12, 30, 30], 1))], CLASSES)
    assert m["ap_per_class"] == {"zero": 0.0, "one": 0.0}


def test_predictions_must_match_the_images():
    with pytest.raises(ValueError, match="1 predictions for 2 images"):
        detection_metrics([pred()], [image(), image()], CLASSES)
