"""The compare command (shrinkflow.cli.compare) on a saved `dvc exp show --json`, run in this
process (its import without torch: pipeline/test_startup.py)."""

from __future__ import annotations

import pytest
from pipeline_repo import ROOT

from shrinkflow.cli.compare import cli

FIXTURE = ROOT / "tests" / "data" / "exp_show.json"


@pytest.fixture(autouse=True)
def _in_the_project(monkeypatch):
    monkeypatch.chdir(ROOT)  # models.yaml and params.yaml are read from the working directory


def test_cli_with_input(tmp_path, capsys):
    cli(["--input", str(FIXTURE), "--max-drop", "5", "--out-dir", str(tmp_path)])
    assert "2 of 3 runs" in capsys.readouterr().out
    assert (tmp_path / "compare.md").is_file()
    with pytest.raises(SystemExit) as exit_:
        cli(["--input", str(tmp_path / "missing.json")])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "not found" in err and err.count("\n") == 1


def test_cli_names_the_models_when_the_model_is_unknown(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli(["--input", str(FIXTURE), "--model", "prunned", "--out-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert exit_.value.code == 2
    assert "--model 'prunned': not 'final' nor an evaluated model of models.yaml" in err
    assert "pruned" in err and not (tmp_path / "compare.md").exists()
