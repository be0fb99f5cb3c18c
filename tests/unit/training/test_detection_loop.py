"""Detection's training loop: an FCOS detector learns the built-in scenes, the same seed gives
the same weights, its model file opens (weights only) into the same detector, and what the loop
does not do is one line."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny_detectors import RECIPE, write_scenes
from tiny_detectors import TRAINED as MODEL

from shrinkflow.core.errors import ShrinkflowError
from shrinkflow.data.prepared_boxes import load_box_split
from shrinkflow.model_files.pt import load_model, save_model
from shrinkflow.nets.detectors import detector_spec
from shrinkflow.params.common import ModelSpec
from shrinkflow.training.detection_loop import predict_boxes, train_detector


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> str:
    """256 training scenes of one digit each, 32 px."""
    return write_scenes(tmp_path_factory.mktemp("scenes"))


@pytest.fixture(scope="module")
def trained(scenes):
    return train_detector(MODEL, RECIPE, scenes, "teacher")


@pytest.mark.slow
def test_a_detector_learns_the_scenes(trained):
    model, spec, history, metrics = trained
    assert [row["epoch"] for row in history] == [1, 2, 3, 4]
    assert history[-1]["train_loss"] < 0.75 * history[0]["train_loss"]
    assert metrics["teacher_test_map_50"] > 0.1  # an untrained FCOS scores 0.00
    assert metrics["teacher_params"] == sum(p.numel() for p in model.parameters())
    assert set(metrics["teacher_test_ap_per_class"]) == {str(d) for d in range(10)}
    assert spec["task"] == "detection" and spec["image_size"] == 32


@pytest.mark.slow
def test_the_model_file_opens_into_the_same_detector(trained, scenes, tmp_path):
    model, spec, _, _ = trained
    save_model(tmp_path / "teacher.pt", model, spec, role="teacher")
    loaded, payload = load_model(tmp_path / "teacher.pt", role="teacher")
    assert payload["spec"] == spec
    test, _ = load_box_split(scenes, "test")
    for (b1, s1, l1), (b2, s2, l2) in zip(predict_boxes(model, test), predict_boxes(loaded, test),
                                          strict=True):
        assert torch.equal(torch.from_numpy(b1), torch.from_numpy(b2))
        np.testing.assert_array_equal(s1, s2)
        np.testing.assert_array_equal(l1, l2)


def test_the_same_seed_gives_the_same_weights(scenes):
    short = RECIPE.model_copy(update={"epochs": 1, "max_batches": 2})
    runs = [train_detector(MODEL, cfg, scenes, "t")[0].state_dict()
            for cfg in (short, short, short.model_copy(update={"seed": 1}))]
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
    assert not all(torch.equal(runs[0][k], runs[2][k]) for k in runs[0])


@pytest.mark.parametrize(("change", "message"), [
    ({"nproc": 2}, r"^teacher\.train\.nproc = 2: detection trains in one process"),
    ({"augment": "crop"}, r"^teacher\.train\.augment = 'crop': detection has no augmentation"),
])
def test_what_the_loop_does_not_do_is_one_line(scenes, change, message):
    cfg = RECIPE.model_copy(update=change)
    with pytest.raises(ShrinkflowError, match=message):
        train_detector(MODEL, cfg, scenes, "teacher", "teacher.train", "teacher.model")


def test_fcos_takes_the_cnn_only_naming_the_key():
    meta = {"shape": [1, 32, 32], "num_classes": 10, "mean": [0.1], "std": [0.2]}
    with pytest.raises(ShrinkflowError, match=r"^teacher\.model\.arch = 'resnet18': detection "
                                              r"builds FCOS around the zoo's cnn stages"):
        detector_spec(ModelSpec(arch="resnet18"), meta, "teacher.model")
