"""Distillation losses (shrinkflow.compress.distill): exact values, frozen teacher, feature
adapters, a tiny end-to-end run."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from shrinkflow.compress.distill import (
    FeatureKDLoss,
    KDLoss,
    attention_map,
    build_loss,
    default_feature_layer,
    distill_metrics,
)
from shrinkflow.core.errors import ShrinkflowError
from shrinkflow.measure.metrics import accuracy
from shrinkflow.nets.zoo import build_model, count_params
from shrinkflow.params.common import ModelSpec, TrainConfig
from shrinkflow.params.distill import DistillParams
from shrinkflow.training.loop import fit, predict, seed_everything


def cnn(widths: list[int], channels: int = 1, classes: int = 4, depth: int = 1) -> nn.Module:
    spec = {"arch": "cnn", "widths": widths, "depth": depth, "width_mult": 1.0,
            "in_channels": channels, "num_classes": classes,
            "mean": [0.3] * channels, "std": [0.3] * channels}
    return build_model(spec)


def identity_teacher(classes: int = 3) -> nn.Module:
    """A 'teacher' whose logits are its inputs, so the test chooses teacher logits directly."""
    teacher = nn.Linear(classes, classes, bias=False)
    with torch.no_grad():
        teacher.weight.copy_(torch.eye(classes))
    return teacher


def distill_params(method: str, **overrides) -> DistillParams:
    train = TrainConfig(epochs=6, batch_size=32, lr=0.05, seed=0, device="cpu")
    overrides.setdefault("alpha", 0.9)  # the weight these tests were written for
    return DistillParams(student=ModelSpec(widths=[4, 8], depth=1), train=train, method=method,
                         **overrides)


# --- KDLoss --------------------------------------------------------------------------------------


def test_kd_loss_matches_hand_computed_value():
    student = [[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]]
    teacher = [[2.0, 1.0, 0.0], [0.5, 0.5, 2.5]]
    targets = [1, 2]
    T, alpha = 2.0, 0.7

    def softmax(row, temp):
        exps = [math.exp(v / temp) for v in row]
        return [e / sum(exps) for e in exps]

    kl = ce = 0.0
    for s, t, y in zip(student, teacher, targets, strict=True):
        p_s, p_t = softmax(s, T), softmax(t, T)
        kl += sum(pt * (math.log(pt) - math.log(ps)) for pt, ps in zip(p_t, p_s, strict=True))
        ce += -math.log(softmax(s, 1.0)[y])
    expected_kd, expected_ce = kl / 2 * T * T, ce / 2
    expected = alpha * expected_kd + (1 - alpha) * expected_ce

    loss_fn = KDLoss(identity_teacher(), T=T, alpha=alpha)
    loss, parts = loss_fn(torch.tensor(student), torch.tensor(targets), torch.tensor(teacher))
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert parts["kd"].item() == pytest.approx(expected_kd, rel=1e-5)
    assert parts["ce"].item() == pytest.approx(expected_ce, rel=1e-5)


def test_kd_loss_is_zero_kl_when_student_equals_teacher():
    logits = torch.randn(5, 3)
    _, parts = KDLoss(identity_teacher(), T=3.0, alpha=0.5)(logits, torch.zeros(5).long(), logits)
    assert parts["kd"].item() == pytest.approx(0.0, abs=1e-6)


class ExplodingTeacher(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise AssertionError("the teacher must not run when alpha == 0")


def test_alpha_zero_is_exactly_cross_entropy_and_skips_teacher():
    torch.manual_seed(0)
    logits, targets = torch.randn(8, 4), torch.randint(0, 4, (8,))
    for smoothing in (0.0, 0.1):
        loss, parts = KDLoss(ExplodingTeacher(), T=4.0, alpha=0.0, label_smoothing=smoothing)(
            logits, targets, torch.randn(8, 1, 8, 8)
        )
        assert torch.equal(loss, F.cross_entropy(logits, targets, label_smoothing=smoothing))
        assert set(parts) == {"ce"}


@pytest.mark.parametrize("method", ["kd", "hint", "attention"])
def test_no_gradient_reaches_the_teacher(method):
    torch.manual_seed(0)
    teacher, student = cnn([8, 16]), cnn([4, 8])
    loss_fn = build_loss(distill_params(method), teacher, student, (1, 8, 8))
    teacher_ids = {id(p) for p in teacher.parameters()}
    assert not teacher_ids & {id(p) for p in loss_fn.parameters()}
    x, y = torch.rand(6, 1, 8, 8), torch.randint(0, 4, (6,))
    loss, _ = loss_fn(student(x), y, x)
    loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None for p in student.parameters())
    assert not teacher.training
    if method == "hint":
        assert all(p.grad is not None for p in loss_fn.parameters())


def test_teacher_follows_the_inputs_device_and_is_not_moved_by_loss_to():
    teacher = cnn([4])
    loss_fn = KDLoss(teacher, T=2.0, alpha=0.5)
    loss_fn.to(torch.float64)  # would convert a registered submodule
    assert next(teacher.parameters()).dtype == torch.float32
    assert loss_fn.teacher_logits(torch.rand(2, 1, 8, 8)).shape == (2, 4)


def test_cached_teacher_logits_are_exact_and_computed_once_per_image():
    torch.manual_seed(0)
    teacher = cnn([8, 16])
    calls: list[int] = []
    teacher.register_forward_hook(lambda _m, inp, _out: calls.append(len(inp[0])))
    cached = KDLoss(teacher, T=4.0, alpha=0.9, cache_teacher=True)
    images = torch.rand(10, 1, 8, 8)
    first = cached.teacher_logits(images[:6])
    shuffled = torch.tensor([7, 2, 9, 0, 5, 3, 8, 1, 6, 4])
    second = cached.teacher_logits(images[shuffled])
    assert calls == [6, 4]  # the second batch only ran the 4 images not seen before
    direct = cached.run_teacher(images)
    assert torch.allclose(first, direct[:6], atol=1e-5)
    assert torch.allclose(second, direct[shuffled], atol=1e-5)


# --- feature losses ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("teacher_widths", "student_widths"), [([16, 32], [4, 8]), ([16, 32], [4, 8, 12]), ([8], [6])]
)
def test_hint_adapter_maps_student_features_to_teacher_shape(teacher_widths, student_widths):
    teacher, student = cnn(teacher_widths), cnn(student_widths)
    loss_fn = build_loss(distill_params("hint"), teacher, student, (1, 8, 8))
    assert isinstance(loss_fn, FeatureKDLoss)
    assert loss_fn.adapter.in_channels == student_widths[-1]
    assert loss_fn.adapter.out_channels == teacher_widths[-1]
    s_feat = torch.randn(3, *loss_fn.student_shape[1:])
    projected = loss_fn.adapter(s_feat)
    assert projected.shape[:2] == (3, teacher_widths[-1])
    t_feat = torch.randn(3, *loss_fn.teacher_shape[1:])
    # the hint: MSE between the projected student map and the teacher's, both average-pooled to
    # the smaller of the two map sizes
    size = [min(a, b) for a, b in zip(projected.shape[-2:], t_feat.shape[-2:], strict=True)]
    expected = F.mse_loss(F.adaptive_avg_pool2d(projected, size),
                          F.adaptive_avg_pool2d(t_feat, size))
    got = loss_fn.feature_loss(s_feat, t_feat)
    assert got.item() == pytest.approx(expected.item(), rel=1e-5) and got.item() > 0.1
    if projected.shape[-2:] == t_feat.shape[-2:]:  # the teacher's map is the projection: zero
        assert loss_fn.feature_loss(s_feat, projected.detach()).item() == pytest.approx(0.0)


@pytest.mark.slow  # torchvision models: seconds of import and tracing
@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v2"])
def test_hint_on_torchvision_students(arch):
    torch.manual_seed(0)
    spec = {"arch": arch, "widths": [8], "depth": 1, "width_mult": 0.25, "in_channels": 3,
            "num_classes": 4, "mean": [0.3] * 3, "std": [0.3] * 3}
    student, teacher = build_model(spec), cnn([8, 16], channels=3)
    loss_fn = build_loss(distill_params("hint"), teacher, student, (3, 8, 8))
    assert loss_fn.adapter.out_channels == 16
    x = torch.rand(2, 3, 8, 8)
    loss, parts = loss_fn(student(x), torch.tensor([0, 1]), x)
    loss.backward()
    assert set(parts) == {"kd", "ce", "hint"} and parts["hint"] > 0
    p = distill_params("hint")  # the blend: alpha KD + (1 - alpha) CE + feature_weight hint
    expected = (p.alpha * parts["kd"] + (1 - p.alpha) * parts["ce"]
                + p.feature_weight * parts["hint"])
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert loss_fn.adapter.weight.grad is not None  # the adapter trains with the student


def test_default_layers_are_last_feature_maps():
    assert default_feature_layer(cnn([4, 8])) == "body.features"
    spec = {"arch": "resnet18", "widths": [8], "depth": 1, "width_mult": 1.0, "in_channels": 1,
            "num_classes": 4, "mean": [0.3], "std": [0.3]}
    assert default_feature_layer(build_model(spec)) == "body.layer4"
    with pytest.raises(ShrinkflowError, match="distill.student_layer"):
        default_feature_layer(nn.Sequential(nn.Linear(2, 2)))


def test_attention_loss_is_zero_for_identical_models_and_positive_otherwise():
    torch.manual_seed(0)
    teacher = cnn([8, 16])
    twin = copy.deepcopy(teacher).eval()  # same weights and BN mode as the frozen teacher
    x, y = torch.rand(4, 1, 8, 8), torch.randint(0, 4, (4,))
    same = build_loss(distill_params("attention"), teacher, twin, (1, 8, 8))
    _, parts = same(twin(x), y, x)
    assert parts["attention"].item() == pytest.approx(0.0, abs=1e-6)
    student = cnn([4, 8, 8])  # other channels and a smaller map (2x2 vs 4x4): pooled to match
    other = build_loss(distill_params("attention"), teacher, student, (1, 8, 8))
    assert other.adapter is None and not list(other.parameters())
    _, parts = other(student(x), y, x)
    assert parts["attention"].item() > 0
    maps = attention_map(torch.randn(3, 5, 4, 4))
    assert torch.allclose(maps.norm(dim=1), torch.ones(3))


def test_unknown_layer_names_are_clear_errors():
    params = distill_params("hint", student_layer="body.nope")
    expected = r"distill\.student_layer = 'body\.nope'.*body\.features"
    with pytest.raises(ShrinkflowError, match=expected):
        build_loss(params, cnn([8]), cnn([4]), (1, 8, 8))
    params = distill_params("hint", teacher_layer="body.classifier")
    with pytest.raises(ShrinkflowError, match="expected a feature map"):
        build_loss(params, cnn([8]), cnn([4]), (1, 8, 8))


def test_building_the_loss_leaves_the_student_untouched():
    """The probe forward must not move BN statistics, so the student's init equals scratch's."""
    student, teacher = cnn([4, 8]), cnn([8, 16])
    before = copy.deepcopy(student.state_dict())
    build_loss(distill_params("hint"), teacher, student, (1, 8, 8))
    assert all(torch.equal(before[k], v) for k, v in student.state_dict().items())


# --- metrics and checks --------------------------------------------------------------------------


# --- end to end ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained_teacher(tiny_data_shared) -> nn.Module:
    """One teacher for the module's distillation runs (tests distil from a copy of it)."""
    seed_everything(0)
    teacher = cnn([8, 16])
    fit(teacher, tiny_data_shared.train, tiny_data_shared.val,
        TrainConfig(epochs=4, batch_size=32, device="cpu"), log=lambda _: None)
    return teacher.eval()


@pytest.mark.parametrize("method", ["kd", "hint", "attention"])
def test_tiny_distillation_beats_chance_and_keeps_teacher_fixed(tiny_data, trained_teacher,
                                                                method):
    chance = 1 / tiny_data.meta["num_classes"]
    teacher = copy.deepcopy(trained_teacher)
    frozen = copy.deepcopy(teacher.state_dict())

    params = distill_params(method, T=4.0, alpha=0.9)
    seed_everything(params.train.seed)
    student = cnn([4, 8])
    loss_fn = build_loss(params, teacher, student, (1, 8, 8))
    history = fit(student, tiny_data.train, tiny_data.val, params.train, loss_fn=loss_fn,
                  log=lambda _: None, name="distill")
    if isinstance(loss_fn, FeatureKDLoss):
        loss_fn.remove_hooks()

    assert count_params(student) < count_params(teacher) / 3
    assert {"train_kd", "train_ce", "val_acc"} <= set(history[-1])
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert all(torch.equal(frozen[k], v) for k, v in teacher.state_dict().items())
    student_logits = predict(student, tiny_data.test[0])
    student_acc = accuracy(student_logits, tiny_data.test[1])
    assert student_acc > chance + 0.3

    m = distill_metrics(teacher, student, tiny_data.test, (1, 8, 8), 0.5, 1.0)
    assert m["student_test_acc"] == pytest.approx(student_acc, abs=1e-6)
    assert m["kd_gain_points"] == pytest.approx(100 * (student_acc - 0.5), abs=1e-3)
    assert m["distill_params_ratio"] == pytest.approx(
        count_params(teacher) / count_params(student), abs=1e-3)
    assert m["distill_teacher_test_acc"] == pytest.approx(
        accuracy(predict(teacher, tiny_data.test[0]), tiny_data.test[1]), abs=1e-6)
    assert m["distill_student_macs"] < m["distill_teacher_macs"]
    same = predict(teacher, tiny_data.test[0]).argmax(1) == student_logits.argmax(1)
    assert m["teacher_student_agreement"] == pytest.approx(same.float().mean().item(), abs=1e-4)
