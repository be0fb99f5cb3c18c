"""Pruning a detector: the backbone loses its share of channels, the heads keep theirs, the
fine-tune runs once per step with the loss it is given, the pruned file reopens (weights only)
into the same detector, and what detection pruning does not do is one line."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from shrinkflow.compress.detection_distill import DetectionKD
from shrinkflow.compress.prune_detection import (
    DenseDetector,
    check_detection_prune,
    check_detector_rebuilds,
    detector_size,
    head_convs,
    prune_detector,
)
from shrinkflow.core.errors import ShrinkflowError
from shrinkflow.data.prepare_detection import read_detection, write_detection
from shrinkflow.data.prepared_boxes import load_box_split
from shrinkflow.model_files.pt import load_model, save_model
from shrinkflow.nets.detectors import build_detector, detector_spec
from shrinkflow.params.common import ModelSpec
from shrinkflow.params.prepare import PrepareParams
from shrinkflow.params.prune import PruneParams

PARAMS = PruneParams(ratio=0.5, iterative_steps=2, round_to=1, sensitivity=False,
                     train={"epochs": 2, "batch_size": 16, "lr": 0.01})


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    """32 training scenes (8 val, 8 test): the three splits and the meta."""
    folder = tmp_path_factory.mktemp("scenes")
    p = PrepareParams(task="detection", source="scenes", image_size=32, scenes={
        "train": 32, "val": 8, "test": 8, "max_digits": 1, "digit_scale": 2})
    write_detection(folder, read_detection(p), "scenes")
    splits = [load_box_split(folder, s) for s in ("train", "val", "test")]
    return [s for s, _ in splits], splits[0][1]


def prune_one(scenes, family: str = "fcos", arch: str = "cnn"):
    """A [8, 16] student (or ``arch``'s trunk) pruned by half in two steps, one fine-tune epoch
    each, distilled from an untrained teacher of the same build."""
    splits, meta = scenes
    spec = detector_spec(ModelSpec(arch=arch, widths=[8, 16], depth=1, detector=family), meta,
                         "distill.student")
    torch.manual_seed(0)
    student, teacher = build_detector(spec), build_detector(spec)
    before = detector_size(student, tuple(meta["shape"]))
    heads = {name: m.out_channels for name, m in DenseDetector(student).named_modules()
             if m in head_convs(student)}
    outcome = prune_detector(student, tuple(meta["shape"]), PARAMS, *splits, meta["classes"],
                             DetectionKD(teacher, T=2.0, alpha=0.5))
    return outcome, spec, before, heads, tuple(meta["shape"])


@pytest.fixture(scope="module")
def pruned(scenes):
    return prune_one(scenes)


def test_the_backbone_loses_its_share_and_the_heads_keep_theirs(pruned):
    check_backbone_and_heads(*pruned)


def test_a_retinanet_prunes_the_same_way(scenes):
    check_backbone_and_heads(*prune_one(scenes, "retinanet"))


@pytest.mark.slow
def test_a_zoo_backbone_prunes_with_its_neck_and_keeps_its_heads(scenes):
    """resnet18's trunk (residual adds) and its 512 -> 256 neck lose half their channels; the
    heads keep theirs and read the pruned neck."""
    outcome, spec, before, heads, shape = prune_one(scenes, arch="resnet18")
    neck = outcome.model.backbone.neck
    assert (neck.in_channels, neck.out_channels) == (256, 128)
    assert {name: m.out_channels for name, m in DenseDetector(outcome.model).named_modules()
            if isinstance(m, nn.Conv2d) and name.startswith("head.")} == heads
    assert outcome.model.head.classification_head.conv[0].in_channels == 128
    check_detector_rebuilds(outcome.model, spec, shape)
    assert detector_size(outcome.model, shape)["params"] < before["params"] / 2


def check_backbone_and_heads(outcome, _spec, before, heads, shape) -> None:
    widths = [m.out_channels for m in outcome.model.backbone.modules()
              if isinstance(m, nn.Conv2d)]
    assert widths == [4, 8]  # half of [8, 16]
    assert {name: m.out_channels for name, m in DenseDetector(outcome.model).named_modules()
            if isinstance(m, nn.Conv2d) and name.startswith("head.")} == heads
    after = detector_size(outcome.model, shape)
    assert after["params"] < before["params"] and after["macs"] < before["macs"]
    assert after["channels"] == sum(widths)


def test_each_step_fine_tunes_with_the_given_loss(pruned):
    outcome = pruned[0]
    assert [(r["prune_step"], r["epoch"]) for r in outcome.history] == [(1, 1), (2, 2)]
    assert all("train_kd_cls" in r for r in outcome.history)  # DetectionKD's parts
    assert 0.0 <= outcome.acc_before_finetune <= 1.0


def test_the_pruned_file_reopens_into_the_same_detector(pruned, tmp_path):
    outcome, spec, _, _, shape = pruned
    save_model(tmp_path / "pruned.pt", outcome.model, spec, role="pruned", pruned=True)
    loaded, _ = load_model(tmp_path / "pruned.pt", role="pruned")
    x = torch.rand(2, *shape)
    with torch.no_grad():
        ours, theirs = DenseDetector(outcome.model.eval())(x), DenseDetector(loaded)(x)
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


@pytest.mark.parametrize(("update", "key"), [
    ({"mode": "unstructured"}, "prune.mode = 'unstructured'"),
    ({"ratio": "auto", "sensitivity": True}, "prune.ratio = 'auto'"),
    ({"importance": "taylor"}, "prune.importance = 'taylor'"),
    ({"ignore_layers": ["backbone.features.0"]}, "prune.ignore_layers"),
    ({"train": {"augment": "crop"}}, "prune.train.augment"),
])
def test_what_detection_pruning_does_not_do_is_one_line(update, key):
    with pytest.raises(ShrinkflowError, match="^" + key.replace(".", r"\.")) as err:
        check_detection_prune(PruneParams(**update))
    assert "\n" not in str(err.value)
