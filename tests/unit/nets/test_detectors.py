"""The FCOS detector around the zoo's cnn stages (shrinkflow.nets.detectors): losses in training,
boxes in evaluation, and it learns the built-in digit scenes."""

import numpy as np
import pytest
import torch
from tiny_detectors import tiny_fcos

from shrinkflow.data.digit_scenes import make_digit_scenes


@pytest.fixture(scope="module")
def scenes():
    images, split = make_digit_scenes(96, canvas=64, seed=0)
    x = [torch.from_numpy(im).float() / 255 for im in images]
    t = [{"boxes": torch.from_numpy(s.boxes), "labels": torch.from_numpy(s.labels)}
         for s in split.images]
    return x, t


def detector(family: str = "fcos"):
    return tiny_fcos([8, 16, 32], 64, detector=family)


LOSSES = {"fcos": {"classification", "bbox_regression", "bbox_ctrness"},
          "retinanet": {"classification", "bbox_regression"}}


@pytest.mark.parametrize("family", ["fcos", "retinanet"])
def test_training_gives_the_detectors_losses_and_evaluation_gives_boxes_in_the_image(
        scenes, family):
    x, t = scenes
    model = detector(family)
    assert type(model).__name__ == {"fcos": "FCOS", "retinanet": "RetinaNet"}[family]
    assert model.backbone.stride == 4 and model.backbone.out_channels == 32
    losses = model(x[:4], t[:4])
    assert set(losses) == LOSSES[family]
    assert all(torch.isfinite(v) and v > 0 for v in losses.values())
    model.eval()
    with torch.no_grad():
        out = model(x[:4])
    assert len(out) == 4
    for o in out:
        boxes = o["boxes"]
        assert boxes.shape[1:] == (4,) and len(o["scores"]) == len(o["labels"]) == len(boxes)
        assert ((boxes >= 0) & (boxes <= 64)).all()
        assert ((o["labels"] >= 0) & (o["labels"] < 10)).all()


@pytest.mark.parametrize("family", ["fcos", "retinanet"])
def test_it_learns_the_digit_scenes(scenes, family):
    x, t = scenes
    model = detector(family)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    order = np.random.default_rng(0).permutation(len(x))
    totals = []
    for step in range(12):  # 4 passes over 96 scenes in batches of 32
        idx = order[(step % 3) * 32:(step % 3 + 1) * 32]
        loss = sum(model([x[i] for i in idx], [t[i] for i in idx]).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        totals.append(loss.item())
    assert np.mean(totals[-3:]) < 0.8 * np.mean(totals[:3]), totals


@pytest.mark.parametrize(("arch", "stride"), [("resnet18", 8), ("mobilenet_v3_small", 16)])
def test_any_zoo_classifier_with_a_convolutional_trunk_is_a_backbone(scenes, arch, stride):
    """The classifier's children up to its pooling: resnet18's small stem (below 96 px) keeps
    three stride-2 stages (8), mobilenet_v3_small its four after the stem (16); the head reads
    its channels."""
    x, t = scenes
    model = tiny_fcos([8], 64, arch=arch)  # widths: the cnn's only
    assert model.backbone.stride == stride
    convs = [m for m in model.head.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs[0].in_channels == model.backbone.out_channels
    losses = model(x[:2], t[:2])
    assert all(torch.isfinite(v) for v in losses.values())


def test_the_backbone_is_the_classifiers_own_trunk():
    """A user's classification weights loaded into the classifier are the detector's."""
    from tiny_detectors import scene_meta

    from shrinkflow.nets.detectors import build_detector, detector_spec
    from shrinkflow.nets.zoo import build_model
    from shrinkflow.params.common import ModelSpec

    spec = detector_spec(ModelSpec(arch="resnet18"), scene_meta(32), "teacher.model")
    classifier = build_model(spec)
    detector = build_detector(spec, classifier)
    assert detector.backbone.features.layer4 is classifier.body.layer4
    assert not hasattr(detector.backbone.features, "fc")  # the classifier head is dropped


def test_retinanet_anchors_start_at_four_times_the_stride_and_its_heads_are_cut():
    model = detector("retinanet")  # stride 4
    assert model.anchor_generator.sizes == ((16, 20, 25),)
    assert model.anchor_generator.num_anchors_per_location() == [9]
    for branch in (model.head.classification_head, model.head.regression_head):
        assert len(branch.conv) == 2
        assert isinstance(branch.conv[0][1], torch.nn.GroupNorm)


def test_a_trunk_wider_than_the_neck_width_gets_a_1x1_neck():
    """resnet18's 512 channels go to the heads through a 1x1 conv to 256; the cnn's 32 directly
    (no neck module: its files are what they were)."""
    from shrinkflow.nets.detectors import NECK_WIDTH

    wide, narrow = tiny_fcos([8], 32, arch="resnet18"), detector()
    assert (wide.backbone.neck.in_channels, wide.backbone.neck.out_channels) == (512, NECK_WIDTH)
    first = wide.head.classification_head.conv[0]
    assert first.in_channels == NECK_WIDTH == wide.backbone.out_channels
    assert narrow.backbone.neck is None
    assert not any(".neck." in k for k in narrow.state_dict())
