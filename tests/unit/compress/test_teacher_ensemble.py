"""Teacher ensembles (shrinkflow.compress.teacher_ensemble): the soft targets are exactly the
members' mean
softened probability, one member is passed through untouched, the ensemble's accuracy becomes the
reference of every drop, bad member params fail with one line, and dvc.yaml gives each extra
member its own stage without touching the single-teacher stages."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from pipeline_repo import ROOT, pipeline_stages, run_stage_main, shipped_params
from prepared_files import write_prepared_dir
from test_deps import code_dep_problems

from shrinkflow.compress.distill import KDLoss
from shrinkflow.compress.teacher_ensemble import (
    EnsembleTeacher,
    check_feature_method,
    ensemble_metrics,
    load_teacher,
    member_file,
    teacher_files,
)
from shrinkflow.core.errors import ShrinkflowError
from shrinkflow.core.metric_keys import ENSEMBLE_ACC, read_model_list
from shrinkflow.measure.metrics import accuracy
from shrinkflow.model_files.pt import save_model
from shrinkflow.nets.zoo import build_model
from shrinkflow.params.load import validate_section
from shrinkflow.params.teacher import TeacherParams
from shrinkflow.results.report import ensemble_lines, model_table
from shrinkflow.results.select_final import build_candidates
from shrinkflow.training.loop import predict

STAGE = ROOT / "stages" / "teacher_ensemble.py"


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


def test_drops_are_measured_against_the_ensemble_when_there_is_one():
    models = read_model_list(ROOT / "models.yaml")
    metrics = {"teacher_acc": 0.95, "student_acc": 0.93, "teacher_test_acc": 0.95}
    rows = [{"model": "student", "batch_size": "64", "p50_ms": "1.0", "runtime": "torch",
             "precision": "fp32", "file_bytes": "100"}]
    single, _ = build_candidates(models, metrics, rows, 64)
    assert single[0].drop_points == pytest.approx(2.0)
    with_ensemble = {**metrics, ENSEMBLE_ACC: 0.97}
    cands, _ = build_candidates(models, with_ensemble, rows, 64)
    assert cands[0].drop_points == pytest.approx(4.0)
    table = model_table(with_ensemble, models).set_index("model")
    assert table.loc["student", "drop_points"] == pytest.approx(4.0)
    assert table.loc["teacher", "accuracy"] == pytest.approx(0.95)  # member 0's own accuracy
    assert table.loc["teacher", "drop_points"] == pytest.approx(2.0)


def test_report_lists_each_member_and_the_ensemble_only_when_there_is_one():
    metrics = {"teacher_test_acc": 0.95, "teacher_1_test_acc": 0.94, "teacher_2_test_acc": 0.96,
               "teacher_5_test_acc": 0.5,  # a removed member's file, left behind
               "teacher_ensemble_members": 3, "teacher_ensemble_seeds": "1,2", ENSEMBLE_ACC: 0.97}
    text = "\n".join(ensemble_lines(metrics))
    for line in ("| teacher (member 0) | 95.00 |", "| teacher_1 (seed 1) | 94.00 |",
                 "| teacher_2 (seed 2) | 96.00 |", "| **ensemble** | **97.00** |"):
        assert line in text
    assert "teacher_5" not in text
    assert ensemble_lines({"teacher_test_acc": 0.95}) == []


# --- params ------------------------------------------------------------------------------------


@pytest.mark.parametrize("seeds, error", [
    ([1, 1], r"teacher\.ensemble_seeds: .*distinct, \[1\] repeated"),
    ([0, 2], r"teacher\.ensemble_seeds: .*must not contain teacher\.train\.seed \(0\)"),
    ([-1], r"teacher\.ensemble_seeds: item 0: .*greater than or equal to 0"),
    ("3", r"teacher\.ensemble_seeds: .*valid list"),
])
def test_bad_member_seeds_get_one_line_naming_the_key(seeds, error):
    raw = {**shipped_params()["teacher"], "ensemble_seeds": seeds}
    with pytest.raises(ShrinkflowError, match=error) as info:
        validate_section("teacher", raw, TeacherParams)
    assert "\n" not in str(info.value)


def test_members_need_train_mode():
    raw = {**shipped_params()["teacher"], "mode": "import", "init": "w.pt", "ensemble_seeds": [1]}
    with pytest.raises(ShrinkflowError, match=r"teacher\.ensemble_seeds: .*needs teacher\.mode"):
        validate_section("teacher", raw, TeacherParams)


# --- dvc.yaml ----------------------------------------------------------------------------------


def test_each_extra_member_is_its_own_stage_and_member_0_never_depends_on_the_list(tmp_path):
    default = pipeline_stages(ROOT)
    assert not any(n.startswith("train_teacher_member@") for n in default)  # [] = no stage
    (tmp_path / "dvc.yaml").write_text((ROOT / "dvc.yaml").read_text())
    (tmp_path / "models.yaml").write_text((ROOT / "models.yaml").read_text())
    params = shipped_params({"teacher": {"ensemble_seeds": [1, 2]}})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    stages = pipeline_stages(tmp_path)
    for seed in (1, 2):
        s = stages[f"train_teacher_member@{seed}"]
        assert s["cmd"] == f"python stages/train_teacher.py {seed}"
        assert list(s["outs"][0]) == [f"models/teachers/teacher_{seed}.pt"]
        assert not code_dep_problems(f"train_teacher_member@{seed}", s)
    assert "teacher.ensemble_seeds" not in stages["train_teacher"]["params"]
    for name in ("distill", "prune", "teacher_ensemble"):
        assert "teacher.ensemble_seeds" in stages[name]["params"]
        assert "models/teachers" in stages[name]["deps"]
    assert (ROOT / "models" / "teachers" / ".gitkeep").is_file()  # the folder dep exists


def test_train_teacher_takes_only_a_listed_seed():
    spec_ = importlib.util.spec_from_file_location("stage_train_teacher",
                                                   ROOT / "stages" / "train_teacher.py")
    stage = importlib.util.module_from_spec(spec_)
    spec_.loader.exec_module(stage)
    assert stage.member_seed([], [1, 2]) is None  # member 0, the teacher as before
    assert stage.member_seed(["2"], [1, 2]) == 2
    for argv in (["3"], ["x"], ["1", "2"]):
        with pytest.raises(ShrinkflowError, match=r"SEED one of teacher\.ensemble_seeds \[1, 2\]"):
            stage.member_seed(argv, [1, 2])


# --- the teacher_ensemble stage ----------------------------------------------------------------


@pytest.fixture
def workspace(tmp_path, monkeypatch, tiny_data):
    write_prepared_dir(tmp_path / "data" / "prepared", tiny_data)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write_params(seeds: list[int]) -> None:
    params = shipped_params({"teacher": {"ensemble_seeds": seeds}})
    Path("params.yaml").write_text(yaml.safe_dump(params))


def test_stage_writes_nothing_new_for_one_teacher(workspace):
    write_params([])
    run_stage_main(STAGE)  # no model is even needed
    assert json.loads(Path("metrics/teacher_ensemble.json").read_text()) == {}


def test_stage_evaluates_the_ensemble_or_names_the_missing_member(workspace, tiny_data):
    write_params([1, 2])
    save(workspace / "models" / "teacher.pt", member(0))
    save(workspace / "models" / "teachers" / "teacher_1.pt", member(1))
    with pytest.raises(ShrinkflowError, match=r"teacher_2\.pt \(written by stage "
                                              r"train_teacher_member@2\)"):
        run_stage_main(STAGE)
    save(workspace / "models" / "teachers" / "teacher_2.pt", member(2))
    run_stage_main(STAGE)
    m = json.loads(Path("metrics/teacher_ensemble.json").read_text())
    x, y = tiny_data.test
    want = accuracy(predict(EnsembleTeacher([member(s) for s in range(3)], 1.0), x), y)
    assert m["teacher_ensemble_members"] == 3 and m[ENSEMBLE_ACC] == round(want, 6)
    assert m["teacher_ensemble_seeds"] == "1,2"
