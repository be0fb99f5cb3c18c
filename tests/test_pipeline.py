"""End to end: the real dvc.yaml on a copy of the project, with tiny params.

One repo is reproduced once for the module; each test then changes one thing and checks exactly
which stages DVC reruns.
"""

import json

import pytest
from pipeline_repo import dvc, make_repo, ran_stages, set_params

MODELS = ["teacher", "student_scratch", "student", "pruned", "quantized", "quantized_torch"]
EVALUATE = {f"evaluate@{m}" for m in MODELS}
ALL = {"prepare", "train_teacher", "train_student_scratch", "distill", "prune", "quantize",
       "benchmark", "report"} | EVALUATE


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    path = make_repo(tmp_path_factory.mktemp("project"))
    result = dvc(path, "repro")
    assert ran_stages(result.stdout) == ALL, result.stdout
    return path


def test_first_repro_writes_every_metric(repo):
    for model in MODELS:
        metrics = json.loads((repo / f"metrics/eval_{model}.json").read_text())
        assert 0.0 <= metrics[f"{model}_acc"] <= 1.0
        assert metrics[f"{model}_file_bytes"] > 0
    teacher = json.loads((repo / "metrics/teacher.json").read_text())
    assert teacher["teacher_params"] > 0
    assert (repo / "reports/summary.md").is_file()


def test_second_repro_does_nothing(repo):
    result = dvc(repo, "repro")
    assert ran_stages(result.stdout) == set(), result.stdout
    assert "up to date" in dvc(repo, "status").stdout


def test_evaluate_param_reruns_only_evaluate(repo):
    set_params(repo, {"evaluate": {"batch_size": 7}})
    ran = ran_stages(dvc(repo, "repro").stdout)
    assert EVALUATE <= ran <= EVALUATE | {"report"}


def test_distill_temperature_reruns_distill_and_downstream_only(repo):
    set_params(repo, {"distill": {"T": 2.5}})
    ran = ran_stages(dvc(repo, "repro").stdout)
    assert "distill" in ran
    untouched = {"prepare", "train_teacher", "train_student_scratch", "evaluate@teacher",
                 "evaluate@student_scratch"}
    assert not ran & untouched, ran
    assert ran <= {"distill", "prune", "quantize", "evaluate@student", "evaluate@pruned",
                   "evaluate@quantized", "evaluate@quantized_torch", "benchmark", "report"}


def test_prune_ratio_reruns_prune_and_downstream_only(repo):
    set_params(repo, {"prune": {"ratio": 0.3}})
    ran = ran_stages(dvc(repo, "repro").stdout)
    assert {"prune", "quantize"} <= ran
    assert ran <= {"prune", "quantize", "evaluate@pruned", "evaluate@quantized",
                   "evaluate@quantized_torch", "benchmark", "report"}


def test_quantize_param_reruns_quantize_and_downstream_only(repo):
    set_params(repo, {"quantize": {"calibration_method": "percentile"}})
    ran = ran_stages(dvc(repo, "repro").stdout)
    assert "quantize" in ran
    assert ran <= {"quantize", "evaluate@quantized", "evaluate@quantized_torch", "benchmark",
                   "report"}


def test_bad_param_fails_before_touching_outputs(repo):
    before = (repo / "models/teacher.pt").read_bytes()
    set_params(repo, {"teacher": {"model": {"arch": "vgg"}}})
    result = dvc(repo, "repro", "train_teacher", check=False)
    assert result.returncode != 0
    assert "teacher.model.arch" in result.stdout + result.stderr
    assert (repo / "models/teacher.pt").read_bytes() == before
