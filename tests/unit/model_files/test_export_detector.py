"""A detector's ONNX file (model_files.export_detector): the parity measure on constructed
detections, and the file's own boxes against PyTorch's (its runtime path without torch:
tests/unit/cli/test_detect.py)."""

from __future__ import annotations

import numpy as np
import pytest
from tiny_detectors import untrained_detector

from shrinkflow.model_files.export_detector import box_parity, export_detector
from shrinkflow.model_files.open import open_model
from shrinkflow.model_files.pt import save_model
from shrinkflow.nets.detectors import build_detector, detector_spec
from shrinkflow.params.common import ModelSpec


def detections(boxes, labels):
    return (np.asarray(boxes, np.float32).reshape(-1, 4), np.ones(len(labels), np.float32),
            np.asarray(labels, np.int64))


def test_box_parity_counts_images_with_the_same_boxes_and_measures_the_rest():
    ref = [detections([[0, 0, 4, 4], [1, 1, 5, 5]], [1, 2]), detections([[2, 2, 8, 8]], [0]),
           detections([], [])]
    near = [detections([[0, 0, 4, 4.5], [1, 1, 5, 5]], [1, 2]), detections([], []),
            detections([], [])]
    assert box_parity(ref, ref) == {"agreement": 1.0, "max_abs_diff": 0.0}
    assert box_parity(ref, near) == {"agreement": pytest.approx(2 / 3), "max_abs_diff": 0.5}
    swapped = [detections([[0, 0, 4, 4], [1, 1, 5, 5]], [2, 1]), *ref[1:]]
    assert box_parity(ref, swapped)["agreement"] == pytest.approx(2 / 3)


@pytest.mark.parametrize("family", ["fcos", "retinanet"])
def test_the_onnx_file_gives_pytorchs_boxes_and_names_its_classes(tmp_path, family):
    model, spec = untrained_detector([4, 8], detector=family)  # confident: boxes found
    model, spec = untrained_detector([4, 8])  # confident: boxes above the threshold
    save_model(tmp_path / "d.pt", model, spec, role="teacher")
    export_detector(model, spec, tmp_path / "d.onnx")
    pt, onnx = open_model(tmp_path / "d.pt"), open_model(tmp_path / "d.onnx")
    assert onnx.spec["classes"] == ["a", "b"] and onnx.num_classes == 2
    images = [np.random.default_rng(i).random((1, 32, 32), dtype=np.float32) for i in range(3)]
    ref, got = [pt.detect(x) for x in images], [onnx.detect(x) for x in images]
    assert all(len(r[0]) > 0 for r in ref)
    parity = box_parity(ref, got)
    assert parity["agreement"] == 1.0 and parity["max_abs_diff"] < 1e-3


def test_a_detector_file_with_a_bad_spec_is_one_line(tmp_path):
    from shrinkflow.core.errors import ShrinkflowError
    from shrinkflow.model_files.export_onnx import write_metadata
    from shrinkflow.model_files.open import META_DETECTOR

    meta = {"shape": [1, 16, 16], "num_classes": 2, "mean": [0.2], "std": [0.3],
            "classes": ["a", "b"]}
    spec = detector_spec(ModelSpec(widths=[4, 8], depth=1), meta, "teacher.model")
    export_detector(build_detector(spec), spec, tmp_path / "d.onnx")
    write_metadata(tmp_path / "d.onnx", {META_DETECTOR: '{"classes": ["a"], "image_size": 16, '
                                                        '"num_classes": 2}'})
    with pytest.raises(ShrinkflowError, match=r"d\.onnx: metadata 'shrinkflow\.detector' is not "
                                              r"a detector's spec"):
        open_model(tmp_path / "d.onnx")
