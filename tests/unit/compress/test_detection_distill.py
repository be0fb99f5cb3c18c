"""Detection KD (shrinkflow.compress.detection_distill): the two terms on constructed outputs,
computed by hand, and one distillation step of an FCOS student."""

import math

import pytest
import torch
from tiny_detectors import scene_meta, tiny_fcos

from shrinkflow.compress.detection_distill import DetectionKD, dense_kd_loss
from shrinkflow.core.errors import ShrinkflowError
from shrinkflow.data.digit_scenes import make_digit_scenes
from shrinkflow.nets.detectors import detector_spec
from shrinkflow.params.common import ModelSpec


def outputs(cls, box):
    """Head outputs for one image: ``cls`` (points x classes) logits, ``box`` (points x 4)."""
    return {"cls_logits": torch.tensor([cls], dtype=torch.float32),
            "bbox_regression": torch.tensor([box], dtype=torch.float32)}


def test_the_student_that_matches_the_teacher_has_nothing_to_learn():
    same = outputs([[0.3, -2.0], [1.5, 0.0]], [[1, 2, 3, 4], [0, 0, 1, 1]])
    kd = dense_kd_loss(same, same, T=2.0)
    assert kd["kd_cls"].item() == pytest.approx(0.0, abs=1e-7)
    assert kd["kd_box"].item() == 0.0


def test_kd_cls_is_the_bernoulli_kl_times_t_squared():
    # teacher logit 0 -> p 0.5; student logit ln 3 -> p 0.75 (T = 1):
    # KL = 0.5 ln(0.5 / 0.75) + 0.5 ln(0.5 / 0.25)
    kl = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)
    box = [[0, 0, 0, 0]]
    kd = dense_kd_loss(outputs([[math.log(3)]], box), outputs([[0.0]], box), T=1.0)
    assert kd["kd_cls"].item() == pytest.approx(kl, rel=1e-6)
    # at T = 2 the logits halve first (2 ln 3 -> ln 3: the same probabilities), and the
    # divergence is scaled back by T**2 = 4
    kd = dense_kd_loss(outputs([[2 * math.log(3)]], box), outputs([[0.0]], box), T=2.0)
    assert kd["kd_cls"].item() == pytest.approx(4 * kl, rel=1e-6)


def test_kd_box_counts_each_point_by_the_teachers_confidence():
    # point A: teacher sure (p 0.9), boxes 2 apart on every side; point B: teacher p 0.1, equal
    a, b = math.log(9), -math.log(9)
    student = outputs([[0.0], [0.0]], [[0, 0, 0, 0], [5, 5, 5, 5]])
    teacher = outputs([[a], [b]], [[2, 2, 2, 2], [5, 5, 5, 5]])
    kd = dense_kd_loss(student, teacher, T=1.0)
    assert kd["kd_box"].item() == pytest.approx(0.9 * 2.0 / (0.9 + 0.1), rel=1e-6)


def test_teacher_and_student_of_different_strides_are_one_line():
    with pytest.raises(ShrinkflowError, match="need the same stride"):
        dense_kd_loss(outputs([[0.0], [0.0]], [[0] * 4] * 2), outputs([[0.0]], [[0] * 4]), 1.0)


@pytest.mark.parametrize(("family", "own"), [
    ("fcos", {"classification", "bbox_regression", "bbox_ctrness"}),
    ("retinanet", {"classification", "bbox_regression"}),
])
def test_one_distillation_step_trains_the_student_and_leaves_the_teacher(family, own):
    images, split = make_digit_scenes(8, canvas=64, seed=0)
    x = [torch.from_numpy(im).float() / 255 for im in images]
    t = [{"boxes": torch.from_numpy(s.boxes), "labels": torch.from_numpy(s.labels)}
         for s in split.images]
    teacher = tiny_fcos([16, 32, 64], 64, detector=family)
    student = tiny_fcos([4, 8, 16], 64, detector=family)
    loss_fn = DetectionKD(teacher, T=2.0, alpha=0.5)
    before = [p.clone() for p in teacher.parameters()]
    total, parts = loss_fn(student, x, t)
    assert set(parts) == own | {"kd_cls", "kd_box"}
    # the student's own losses are what its forward computes in training mode
    forward = student(x, t)
    assert {k: v.item() for k, v in forward.items()} == pytest.approx(
        {k: float(parts[k]) for k in own}, rel=1e-5)
    expected = 0.5 * sum(parts[k] for k in own) + 0.5 * (parts["kd_cls"] + parts["kd_box"])
    assert total.item() == pytest.approx(expected.item(), rel=1e-6)
    total.backward()
    assert all(p.grad is not None for p in student.parameters() if p.requires_grad)
    assert all(p.grad is None for p in teacher.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, teacher.parameters(), strict=True))


def test_the_kd_gain_is_in_map_points_against_the_scratch_control(monkeypatch):
    import shrinkflow.compress.detection_distill as dd

    teacher = tiny_fcos([4, 8], 32)
    monkeypatch.setattr(dd, "split_map", lambda model, split, classes: {"map": 0.5})
    m = dd.detection_distill_metrics(
        teacher, {"student_test_map": 0.41, "student_params": 100}, None, [], 0.38)
    assert m["kd_gain_map_points"] == pytest.approx(3.0)
    assert m["distill_teacher_test_map"] == 0.5 and m["distill_scratch_test_map"] == 0.38
    assert m["distill_params_ratio"] == round(sum(p.numel() for p in teacher.parameters()) / 100,
                                              3)


def test_what_detection_kd_cannot_take_is_one_line_before_any_work():
    from types import SimpleNamespace

    from shrinkflow.compress.detection_distill import check_detection_student, check_same_stride

    def spec(widths, arch="cnn"):
        return detector_spec(ModelSpec(arch=arch, widths=widths), scene_meta(32), "x")

    teacher = spec([8, 16, 32])
    check_same_stride(spec([4, 8, 16]), teacher, "models/teacher.pt", "distill.student")
    retina = detector_spec(ModelSpec(widths=[4, 8, 16], detector="retinanet"), scene_meta(32), "x")
    with pytest.raises(ShrinkflowError, match=r"^distill\.student\.detector = 'retinanet', the "
                                              r"teacher's in models/teacher\.pt 'fcos'"):
        check_same_stride(retina, teacher, "models/teacher.pt", "distill.student")
    check_same_stride(spec([8], "resnet18"), spec([8, 16, 16, 16]), "t.pt", "distill.student")
    with pytest.raises(ShrinkflowError, match=r"^distill\.student: its feature map has stride 2, "
                                              r"the teacher's \(cnn \[8, 16, 32\] depth 2 in "
                                              r"models/teacher\.pt\) 4"):
        check_same_stride(spec([4, 8]), teacher, "models/teacher.pt", "distill.student")
    with pytest.raises(ShrinkflowError, match=r"^models/teacher\.pt: a classifier"):
        check_same_stride(spec([4, 8]), {"widths": [4, 8]}, "models/teacher.pt", "distill.student")
    with pytest.raises(ShrinkflowError, match=r"^distill\.method = 'hint'"):
        check_detection_student(SimpleNamespace(input_size=0, method="hint"))
    with pytest.raises(ShrinkflowError, match=r"^distill\.input_size = 16"):
        check_detection_student(SimpleNamespace(input_size=16, method="kd"))
