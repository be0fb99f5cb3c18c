"""Detection's training loop: an FCOS detector learns the built-in scenes, the same seed gives
the same weights, its model file opens (weights only) into the same detector, and what the loop
does not do is one line."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny_detectors import RECIPE, scene_meta, write_scenes
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


def test_a_network_without_a_convolutional_trunk_is_one_line_naming_the_key():
    with pytest.raises(ShrinkflowError, match=r"^teacher\.model\.arch: its trunk \(the layers "
                                              r"before global pooling\) gives no feature map on "
                                              r"a 32 px image") as err:
        detector_spec(ModelSpec(arch="vit_b_16"), scene_meta(32), "teacher.model")
    assert "\n" not in str(err.value)


def test_init_loads_a_users_classifier_weights_into_the_backbone(scenes):
    """teacher.init's path: ``init`` gets the classifier whose trunk becomes the backbone."""
    seen = {}

    def init(classifier, spec):
        first = classifier.body.features[0]
        first.weight.data.fill_(0.5)  # what load_into does with a file's tensors
        seen.update(spec=spec, conv=first)

    cfg = RECIPE.model_copy(update={"epochs": 1, "max_batches": 1, "lr": 1e-6})
    model, spec, _, _ = train_detector(MODEL, cfg, scenes, "teacher", init=init)
    assert seen["spec"] == spec and model.backbone.features[0] is seen["conv"]
    assert torch.allclose(model.backbone.features[0].weight, torch.tensor(0.5), atol=1e-4)
