"""stages/teacher_ensemble.py run in this process: nothing for one teacher, the ensemble's metrics
for several, the missing member named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from pipeline_repo import ROOT, run_stage_main, shipped_params
from prepared_files import write_prepared_dir

from shrinkflow.compress.teacher_ensemble import EnsembleTeacher
from shrinkflow.core.errors import ShrinkflowError
from shrinkflow.core.metric_keys import ENSEMBLE_ACC
from shrinkflow.measure.metrics import accuracy
from shrinkflow.model_files.pt import save_model
from shrinkflow.nets.zoo import build_model, make_spec
from shrinkflow.params.common import ModelSpec
from shrinkflow.training.loop import predict

STAGE = ROOT / "stages" / "teacher_ensemble.py"
SPEC = make_spec(ModelSpec(widths=[4, 8], depth=1), 1, 4, [0.3], [0.3])


def member(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(SPEC).eval()


def save(path: Path, model: torch.nn.Module) -> None:
    save_model(path, model, SPEC, role="teacher")


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
