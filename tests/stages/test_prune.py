"""stages/prune.py run in this process on a temporary workspace."""

from __future__ import annotations

import csv
import json

import pytest
import torch
import yaml
from pipeline_repo import ROOT, run_stage_main, shipped_params
from prepared_files import write_prepared_dir

from shrinkflow.model_files.pt import save_model
from shrinkflow.nets.zoo import build_model, make_spec
from shrinkflow.params.common import ModelSpec


@pytest.mark.parametrize("budget", [0.0, 100.0])
def test_stage_budget_mode_writes_curve_and_reason(budget, tmp_path, monkeypatch, tiny_data,
                                                   capsys):
    write_prepared_dir(tmp_path / "data" / "prepared", tiny_data)
    for role, widths in (("student", [8, 16]), ("teacher", [16, 16])):
        torch.manual_seed(0)
        spec = make_spec(ModelSpec(widths=widths, depth=1), 1, 4, [0.3], [0.3])
        save_model(tmp_path / "models" / f"{role}.pt", build_model(spec), spec, role=role)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(shipped_params({
        "budget": {"max_drop_points": budget},
        "prune": {"ratio": "auto", "round_to": 4, "iterative_steps": 2,
                  "train": {"epochs": 1, "batch_size": 32, "max_batches": 2, "device": "cpu"}}})))
    monkeypatch.chdir(tmp_path)
    run_stage_main(ROOT / "stages" / "prune.py")
    metrics = json.loads((tmp_path / "metrics" / "prune.json").read_text())
    with open(tmp_path / "metrics" / "prune_steps.csv") as f:
        steps = list(csv.DictReader(f))
    assert all(isinstance(v, (int, float, str, bool)) for v in metrics.values())
    assert metrics["prune_budget_points"] == budget
    assert steps[0]["step"] == "0" and metrics["prune_step_chosen"] == len(steps) - 1
    out = capsys.readouterr().out
    if budget == 0:
        assert len(steps) == 1 and metrics["prune_macs_ratio"] == 1.0
        assert "unpruned student" in metrics["prune_stop_reason"]
        assert sum("unpruned student" in line for line in out.splitlines()) >= 1
    else:
        assert len(steps) >= 2 and metrics["prune_macs_ratio"] < 1.0
        assert metrics["prune_channels"] == steps[-1]["channels"]
