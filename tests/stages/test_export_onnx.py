"""stages/export_onnx.py (export_onnx@NAME) run in this process: the teacher / student as ONNX,
checked against PyTorch on the test split; a wrong role or name refused."""

from __future__ import annotations

import json
import sys

import pytest
import torch
import yaml
from pipeline_repo import ROOT, run_stage_main, shipped_params
from prepared_files import write_prepared_dir

from shrinkflow.core.errors import ShrinkflowError
from shrinkflow.model_files.open import open_model
from shrinkflow.model_files.pt import save_model
from shrinkflow.nets.zoo import build_model, make_spec
from shrinkflow.params.common import ModelSpec

STAGE = ROOT / "stages" / "export_onnx.py"


def _run_stage(monkeypatch, name: str = "teacher") -> None:
    monkeypatch.setattr(sys, "argv", ["export_onnx.py", name])
    run_stage_main(STAGE)


@pytest.fixture
def workspace(tmp_path, tiny_data, monkeypatch):
    meta = write_prepared_dir(tmp_path / "data" / "prepared", tiny_data)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(shipped_params()))
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    spec = make_spec(ModelSpec(widths=[4, 8], depth=1), 1, 4, meta["mean"], meta["std"])
    return tmp_path, build_model(spec).eval(), spec


@pytest.mark.parametrize("name", ["teacher", "student"])
def test_stage_writes_onnx_matching_torch(workspace, tiny_data, monkeypatch, name):
    root, model, spec = workspace
    save_model(root / "models" / f"{name}.pt", model, spec, role=name)
    _run_stage(monkeypatch, name)
    metrics = json.loads((root / "metrics" / f"export_{name}.json").read_text())
    assert metrics[f"{name}_onnx_agreement"] == 1.0
    assert metrics[f"{name}_onnx_max_abs_diff"] < 1e-4
    onnx_model = open_model(root / "models" / f"{name}.onnx", (1, 8, 8), 4)
    x = tiny_data.test[0]
    torch.testing.assert_close(onnx_model.predict(x), model(x.float() / 255).detach(),
                               atol=1e-4, rtol=0)


def test_stage_refuses_a_student_saved_as_the_teacher(workspace, monkeypatch):
    root, model, spec = workspace
    save_model(root / "models" / "teacher.pt", model, spec, role="student")
    with pytest.raises(ShrinkflowError, match=r"models/teacher\.pt: expected the 'teacher'"):
        _run_stage(monkeypatch)
    assert not (root / "models" / "teacher.onnx").exists()


def test_stage_refuses_an_unknown_name(workspace, monkeypatch):
    with pytest.raises(ShrinkflowError, match="NAME: one of teacher, student"):
        _run_stage(monkeypatch, "pruned")
