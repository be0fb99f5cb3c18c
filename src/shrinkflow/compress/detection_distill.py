"""Distillation for detection (the distill stage on ``prepare.task: detection``): a dense
detector's per-point outputs, the student's against the teacher's.

FCOS predicts at every cell of its feature map: class logits (one sigmoid per class), four box
offsets and a centre-ness. A student with the teacher's stride predicts at the same points, so
the teacher's outputs are a dense soft target, as logits are for a classifier:

- ``kd_cls``: per point and class, the Bernoulli KL divergence from the teacher's sigmoid
  probabilities to the student's, both at temperature ``T``, times ``T**2`` (as for classifier
  KD, so the gradient's scale does not shrink with ``T``), averaged over points and classes;
- ``kd_box``: the L1 distance between the box offsets, weighted per point by the teacher's
  highest class probability, so the many background points, whose boxes mean nothing, count
  little.

The student's own FCOS losses against the labelled boxes stay; ``alpha`` shares the weight, as
distill's classifier losses do.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection import FCOS

from shrinkflow.core.errors import ShrinkflowError
from shrinkflow.data.prepared_boxes import BoxSplit
from shrinkflow.model_files.user_weights import arch_label
from shrinkflow.nets.detectors import detector_losses, detector_stride
from shrinkflow.nets.zoo import count_params
from shrinkflow.training.detection_loop import split_map


def _head_pass(model: FCOS, images: list[torch.Tensor],
               targets: list[dict[str, torch.Tensor]] | None = None) -> tuple:
    """``FCOS.forward`` up to its head: the transformed batch and targets, the feature maps and
    the head's outputs."""
    batch, targets = model.transform(images, targets)
    features = list(model.backbone(batch.tensors).values())
    return batch, targets, features, model.head(features)


def head_outputs(model: FCOS, images: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """The head's raw outputs at every point: ``cls_logits`` (N, P, K), ``bbox_regression``
    (N, P, 4), ``bbox_ctrness`` (N, P, 1), as ``FCOS.forward`` computes them before decoding."""
    return _head_pass(model, images)[3]


def dense_kd_loss(student: dict[str, torch.Tensor], teacher: dict[str, torch.Tensor],
                  T: float) -> dict[str, torch.Tensor]:
    """``kd_cls`` and ``kd_box`` (see the module docstring) from two ``head_outputs``."""
    s, t = student["cls_logits"] / T, teacher["cls_logits"] / T
    if s.shape != t.shape:
        raise ShrinkflowError(f"detection KD: the student predicts at {tuple(s.shape[:2])} "
                              f"(images, points) and the teacher at {tuple(t.shape[:2])}; "
                              "they need the same stride and classes")
    p_t = torch.sigmoid(t)
    kl = (p_t * (F.logsigmoid(t) - F.logsigmoid(s))
          + (1 - p_t) * (F.logsigmoid(-t) - F.logsigmoid(-s)))
    weight = torch.sigmoid(teacher["cls_logits"]).amax(dim=-1)  # (N, P): foreground-ness
    l1 = (student["bbox_regression"] - teacher["bbox_regression"]).abs().mean(dim=-1)
    return {"kd_cls": kl.mean() * T * T,
            "kd_box": (weight * l1).sum() / weight.sum().clamp_min(1e-12)}


class DetectionKD(nn.Module):
    """The training loss of a distilled FCOS student: ``(1 - alpha)`` x its FCOS losses against
    the labelled boxes + ``alpha`` x (``kd_cls`` + ``kd_box``) against a frozen teacher."""

    def __init__(self, teacher: FCOS, T: float, alpha: float) -> None:
        super().__init__()
        self.teacher = teacher.eval().requires_grad_(False)
        self.T, self.alpha = T, alpha

    def forward(self, student: FCOS, images: list[torch.Tensor],
                targets: list[dict[str, torch.Tensor]]) -> tuple[torch.Tensor, dict]:
        """The total loss and each part (detached), for one batch; ``student`` in train mode."""
        batch, targets, features, outputs = _head_pass(student, images, targets)
        anchors = student.anchor_generator(batch, features)
        own = detector_losses(student, targets, outputs, anchors, features)
        with torch.no_grad():
            taught = head_outputs(self.teacher, images)
        kd = dense_kd_loss(outputs, taught, self.T)
        total = ((1 - self.alpha) * sum(own.values())
                 + self.alpha * (kd["kd_cls"] + kd["kd_box"]))
        return total, {k: v.detach() for k, v in {**own, **kd}.items()}


def detection_distill_metrics(teacher: FCOS, student_metrics: dict[str, Any], test: BoxSplit,
                              classes: list[str], scratch_test_map: float) -> dict[str, Any]:
    """``metrics/distill.json`` for detection: the student's ``student_*`` metrics (from
    ``training.detection_loop.train_detector``) plus the teacher's test mAP, the scratch
    control's, and the KD gain in mAP points (100 x the mAP difference), as classification's
    ``kd_gain_points`` is in accuracy points."""
    teacher_map = split_map(teacher, test, classes)["map"]
    student_map = student_metrics["student_test_map"]
    t_params = count_params(teacher)
    return {
        **student_metrics,
        "distill_teacher_params": t_params,
        "distill_params_ratio": round(t_params / max(student_metrics["student_params"], 1), 3),
        "distill_teacher_test_map": teacher_map,
        "distill_scratch_test_map": round(float(scratch_test_map), 6),
        "kd_gain_map_points": round(100 * (student_map - float(scratch_test_map)), 3) + 0.0,
    }


def check_detection_student(p: Any) -> None:
    """What detection's student does not take yet (``p``: the distill section), refused
    before any work in one line."""
    if p.input_size:
        raise ShrinkflowError(f"distill.input_size = {p.input_size}: detection students see the "
                              "data's own size; expected 0")
    if p.method != "kd":
        raise ShrinkflowError(f"distill.method = {p.method!r}: detection distils the dense head "
                              "outputs (kd); expected kd")


def check_same_stride(student_spec: dict[str, Any], teacher_spec: dict[str, Any],
                      teacher_file: str, student_key: str) -> None:
    """Dense KD compares the two heads point by point, so the student's feature map needs the
    teacher's stride (for the cnn: as many stages, one 2x pooling between stages)."""
    if not teacher_spec.get("task") == "detection":
        raise ShrinkflowError(f"{teacher_file}: a classifier; detection distils from the FCOS "
                              "teacher that train_teacher writes on detection data")
    if student_spec["detector"] != teacher_spec["detector"]:
        raise ShrinkflowError(
            f"{student_key}.detector = {student_spec['detector']!r}, the teacher's in "
            f"{teacher_file} {teacher_spec['detector']!r}; detection KD compares the outputs of "
            "the same head: expected the teacher's")
    student, teacher = detector_stride(student_spec, student_key), detector_stride(teacher_spec)
    if student != teacher:
        raise ShrinkflowError(
            f"{student_key}: its feature map has stride {student}, the teacher's "
            f"({arch_label(teacher_spec)} in {teacher_file}) {teacher}; detection KD needs the "
            "same stride (a cnn: as many widths as the teacher's, narrower)")
