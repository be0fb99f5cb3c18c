"""End to end on a tiny copy of the project: export_onnx@teacher/student and select in dvc.yaml.

Tiny models are far from the teacher, so the budget is opened wide (select.max_drop_points 100)
to get a choice, then closed with a 1-byte file limit to check the failure path.
"""

import json

import pytest
from pipeline_repo import copy_repo, dvc, ran_stages, set_params

from shrinkflow.model_files.card import CARD_FILE, read_card_file

pytestmark = pytest.mark.slow  # end to end: real stage processes


@pytest.fixture(scope="module")
def repo(reproduced_template, tmp_path_factory):
    """A copy of the session's reproduced tiny project (TINY opens select's budget to 100)."""
    ran = ran_stages(reproduced_template.first_repro)
    assert {"export_onnx@teacher", "export_onnx@student", "select", "report"} <= ran, ran
    return copy_repo(reproduced_template.path, tmp_path_factory.mktemp("select") / "repo")


def test_select_ships_one_model_and_names_it(repo):
    final = json.loads((repo / "metrics/final.json").read_text())
    names = sorted(f.name for f in (repo / "models/final").iterdir())
    model = f"model.{final['final_format']}"
    assert names == sorted([model, CARD_FILE])
    assert final["final_file"] == f"models/final/{model}"
    # the benchmarked file's bytes; the shipped one carries its card on top
    assert (repo / "models/final" / model).stat().st_size > final["final_file_bytes"]
    card = read_card_file(repo / "models/final" / CARD_FILE)
    assert card["model"] == final["final_model"] and card["file_format"] == final["final_format"]
    assert card["accuracy"]["test_acc"] == final["final_acc"]
    b = final["final_batch_size"]
    assert {"batch_size": b, "ms": final["final_p50_ms"]} in card["latency"]["p50_ms"]
    assert card["classes"] == json.loads((repo / "data/prepared/meta.json").read_text())["classes"]
    assert card["pipeline"]["commit"] is None or len(card["pipeline"]["commit"]) == 40
    bench = json.loads((repo / "metrics/benchmark.json").read_text())
    assert final["final_p50_ms"] == bench[f"bench_{final['final_model']}_b{b}_p50_ms"]
    assert f"bench_teacher_onnx_b{b}_p50_ms" in bench  # the teacher ran in ONNX Runtime too
    summary = (repo / "reports/summary.md").read_text()
    assert f"**Final model: `{final['final_model']}`**" in summary.split("## Models")[0]


def test_quantize_settings_do_not_reexport_the_teacher(repo):
    set_params(repo, {"quantize": {"calibration_method": "percentile"}})
    status = dvc(repo, "status").stdout
    assert "quantize:" in status and "export_onnx@" not in status, status
    set_params(repo, {"quantize": {"calibration_method": "minmax"}})


def test_nothing_within_budget_fails_and_keeps_the_previous_final(repo):
    before = {f.name: f.read_bytes() for f in (repo / "models/final").iterdir()}
    final_json = (repo / "metrics/final.json").read_text()
    set_params(repo, {"select": {"max_file_bytes": 1}})
    result = dvc(repo, "repro", "select", check=False)
    assert result.returncode != 0
    assert "select: no model within 100 points of the teacher and file <= 1 bytes; the " \
           "closest is" in result.stdout + result.stderr
    assert {f.name: f.read_bytes() for f in (repo / "models/final").iterdir()} == before
    assert (repo / "metrics/final.json").read_text() == final_json
