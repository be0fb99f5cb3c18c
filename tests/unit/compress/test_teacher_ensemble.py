"""Teacher ensembles (shrinkflow.compress.teacher_ensemble): the soft targets are exactly the
members' mean softened probability, one member is passed through untouched, members load in
order and are checked by file, the ensemble is measured on the given split."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from shrinkflow.compress.distill import KDLoss
from shrinkflow.compress.teacher_ensemble import (
    EnsembleTeacher,
    check_feature_method,
    check_teacher_fits_data,
    ensemble_metrics,
    load_teacher,
    member_file,
    teacher_files,
)
from shrinkflow.core.errors import ShrinkflowError
from shrinkflow.core.metric_keys import ENSEMBLE_ACC
from shrinkflow.measure.metrics import accuracy
from shrinkflow.model_files.pt import save_model
from shrinkflow.nets.zoo import build_model
from shrinkflow.training.loop import predict


def spec(classes: int = 4, widths: tuple[int, ...] = (4, 8)) -> dict:
    return {"arch": "cnn", "widths": list(widths), "depth": 1, "width_mult": 1.0,
            "in_channels": 1, "num_classes": classes, "mean": [0.3], "std": [0.3]}


def member(seed: int, classes: int = 4) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(spec(classes)).eval()


# --- the ensemble module -----------------------------------------------------------------------


@pytest.mark.parametrize("T", [1.0, 4.0])
def test_softened_output_is_the_members_mean_softened_probability(T):
    members = [member(s) for s in range(3)]
    x = torch.randn(16, 1, 8, 8)
    with torch.no_grad():
        z = EnsembleTeacher(members, T)(x)
        mean = torch.stack([F.softmax(m(x) / T, dim=1) for m in members]).mean(0)
    torch.testing.assert_close(F.softmax(z / T, dim=1), mean, rtol=1e-5, atol=1e-6)
    # and it is not simply one member's (the members disagree on these inputs)
    assert not torch.allclose(mean, F.softmax(members[0](x) / T, dim=1), atol=1e-3)


def test_kd_loss_takes_the_ensemble_as_its_teacher():
    """KDLoss against the ensemble's logits = KL to the mean soft targets, by hand."""
    members, T = [member(s) for s in range(2)], 4.0
    x, student_logits = torch.randn(8, 1, 8, 8), torch.randn(8, 4)
    loss = KDLoss(EnsembleTeacher(members, T), T, alpha=1.0)
    got, _ = loss(student_logits, torch.zeros(8, dtype=torch.long), x)
    with torch.no_grad():
        target = torch.stack([F.softmax(m(x) / T, dim=1) for m in members]).mean(0)
    want = F.kl_div(F.log_softmax(student_logits / T, dim=1), target,
                    reduction="batchmean") * T * T
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def test_an_ensemble_needs_two_members():
    with pytest.raises(ValueError, match="at least 2"):
        EnsembleTeacher([member(0)], 4.0)


# --- loading -----------------------------------------------------------------------------------


def save(path: Path, model: torch.nn.Module, role: str = "teacher", classes: int = 4) -> Path:
    save_model(path, model, spec(classes), role=role)
    return path


def test_one_member_is_returned_as_itself(tmp_path):
    path = save(tmp_path / "teacher.pt", member(0))
    model, payloads = load_teacher([path], T=4.0)
    assert not isinstance(model, EnsembleTeacher) and len(payloads) == 1
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():  # its own logits, not T * log softmax(z / T)
        torch.testing.assert_close(model(x), member(0)(x), rtol=0, atol=0)


def test_several_members_load_as_the_ensemble_in_order(tmp_path):
    paths = [save(tmp_path / f"m{s}.pt", member(s)) for s in range(3)]
    model, payloads = load_teacher(paths, T=2.0)
    assert isinstance(model, EnsembleTeacher) and model.T == 2.0 and len(payloads) == 3
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(model.members[2](x), member(2)(x), rtol=0, atol=0)


def test_a_member_of_another_role_or_class_count_is_refused_by_file(tmp_path):
    first = save(tmp_path / "teacher.pt", member(0))
    student = save(tmp_path / "student.pt", member(1), role="student")
    with pytest.raises(ShrinkflowError, match=r"student\.pt: expected the 'teacher' model"):
        load_teacher([first, student], T=4.0)
    other = save(tmp_path / "teacher_2.pt", member(2, classes=5), classes=5)
    with pytest.raises(ShrinkflowError, match=r"teacher_2\.pt: teacher member has num_classes"):
        load_teacher([first, other], T=4.0)


def test_member_files_and_the_stages_that_write_them():
    files = teacher_files("models/teacher.pt", "models/teachers", [3, 1])
    assert files == {"models/teacher.pt": "train_teacher",
                     "models/teachers/teacher_3.pt": "train_teacher_member@3",
                     "models/teachers/teacher_1.pt": "train_teacher_member@1"}
    assert member_file("models/teachers", 3) == Path("models/teachers/teacher_3.pt")


def test_feature_methods_are_refused_with_an_ensemble_only():
    check_feature_method("hint", 1)
    check_feature_method("kd", 3)
    with pytest.raises(ShrinkflowError, match=r"distill\.method = 'hint' needs a single teacher"):
        check_feature_method("hint", 2)


# --- metrics and the drop reference ------------------------------------------------------------


def test_ensemble_metrics_measure_the_ensemble_on_the_given_split(tiny_data):
    members = [member(s) for s in range(3)]
    m = ensemble_metrics(members, tiny_data.test, tiny_data.val, seeds=[4, 9])
    ens = EnsembleTeacher(members, 1.0)
    x, y = tiny_data.test
    assert m["teacher_ensemble_members"] == 3 and m["teacher_ensemble_seeds"] == "4,9"
    assert m[ENSEMBLE_ACC] == round(accuracy(predict(ens, x), y), 6)
    mean = sum(accuracy(predict(mm, x), y) for mm in members) / 3
    assert m["teacher_ensemble_mean_member_test_acc"] == round(mean, 6)
    assert ensemble_metrics(members[:1], tiny_data.test, tiny_data.val) == {}


# --- params ------------------------------------------------------------------------------------


# --- dvc.yaml ----------------------------------------------------------------------------------


# --- the teacher_ensemble stage ----------------------------------------------------------------


def test_teacher_must_match_the_data():
    meta = {"shape": [1, 8, 8], "num_classes": 4}
    check_teacher_fits_data({"in_channels": 1, "num_classes": 4}, meta, "models/teacher.pt")
    with pytest.raises(ShrinkflowError, match="num_classes = 10 but the prepared data needs 4"):
        check_teacher_fits_data({"in_channels": 1, "num_classes": 10}, meta, "models/teacher.pt")
