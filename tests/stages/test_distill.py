"""stages/distill.py run in this process on a temporary workspace."""

from __future__ import annotations

import pytest
import yaml
from pipeline_repo import ROOT, run_stage_main, shipped_params

from shrinkflow.core.errors import ShrinkflowError

STAGE = ROOT / "stages" / "distill.py"


def test_stage_fails_clearly_without_teacher(tmp_path, monkeypatch):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(shipped_params()))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ShrinkflowError, match=r"models/teacher\.pt.*train_teacher"):
        run_stage_main(STAGE)
    assert not (tmp_path / "models" / "student.pt").exists()
