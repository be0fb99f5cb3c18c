"""End to end on a tiny copy of the project: export_onnx@teacher/student and select in dvc.yaml.

Tiny models are far from the teacher, so the budget is opened wide (budget.max_drop_points 100)
to get a choice, then closed with a 1-byte file limit to check the "nothing within budget" path:
select_final writes its outputs, the report is written, and the pipeline exits non-zero.
"""

import csv
import io
import json
from pathlib import Path

import pytest
from pipeline_repo import copy_repo, dvc, ran_stages, run, set_params

from shrinkflow.model_files.card import CARD_FILE, read_card_file

pytestmark = pytest.mark.slow  # end to end: real stage processes


@pytest.fixture(scope="module")
def repo(reproduced_template, tmp_path_factory):
    """A copy of the session's reproduced tiny project (TINY opens the budget to 100)."""
    ran = ran_stages(reproduced_template.first_repro)
    assert {"export_onnx@teacher", "export_onnx@student", "select_final", "report"} <= ran, ran
    return copy_repo(reproduced_template.path, tmp_path_factory.mktemp("select") / "repo")


def test_select_ships_one_model_and_names_it(repo):
    final = json.loads((repo / "metrics/final.json").read_text())
    selection = json.loads((repo / "metrics/selection.json").read_text())
    names = sorted(f.name for f in (repo / "models/final").iterdir())
    model = Path(selection["final_file"]).name
    assert names == sorted([model, CARD_FILE]) and final["final_within_budget"] is True
    # the benchmarked file's bytes; the shipped one carries its card on top
    assert (repo / "models/final" / model).stat().st_size > final["final_file_bytes"]
    card = read_card_file(repo / "models/final" / CARD_FILE)
    assert card["model"] == final["final_model"] == selection["final_model"]
    assert card["accuracy"]["test_acc"] == final["final_acc"]
    assert final["final_acc_low"] <= final["final_acc"] <= final["final_acc_high"]
    assert card["classes"] == json.loads((repo / "data/prepared/meta.json").read_text())["classes"]
    with open(repo / "metrics/benchmark.csv") as f:
        rows = {(r["model"], int(r["batch_size"])): r for r in csv.DictReader(f)}
    b = selection["batch_size"]
    shipped = rows[(final["final_model"], b)]
    assert {"batch_size": b, "ms": float(shipped["p50_ms"])} in card["latency"]["p50_ms"]
    assert float(shipped["p50_low_ms"]) <= float(shipped["p50_ms"]) <= float(
        shipped["p50_high_ms"])
    assert ("teacher_onnx", b) in rows  # the teacher ran in ONNX Runtime too
    summary = (repo / "reports/summary.md").read_text()
    assert f"**Final model: `{final['final_model']}`**" in summary.split("## Models")[0]


def test_dvc_metrics_are_few_and_unique(repo):
    """`dvc exp show` compares: one column per key, at most ~25, no path prefixes."""
    header = next(csv.reader(io.StringIO(dvc(repo, "exp", "show", "--csv").stdout)))
    metric_cols = [c for c in header if c in json.loads(
        (repo / "metrics/final.json").read_text()) or c.endswith("_epochs_done")]
    assert 15 <= len(metric_cols) <= 25, metric_cols
    assert not [c for c in header if ".json:" in c]  # DVC prefixes keys that repeat


def documented_commands() -> list[str]:
    """The shell lines of docs/results.md's block marked `<!-- test_results: commands -->`."""
    text = (Path(__file__).resolve().parents[2] / "docs" / "results.md").read_text()
    block = text.split("<!-- test_results: commands -->", 1)[1].split("```bash\n", 1)[1]
    return [line for line in block.split("```", 1)[0].splitlines() if line.strip()]


def test_documented_dvc_commands_work(repo):
    commands = documented_commands()
    assert len(commands) >= 3 and all(c.startswith("dvc ") for c in commands)
    outputs = []
    for command in commands:
        result = run(repo, "bash", "-c", command.replace("dvc ", "python -m dvc ", 1),
                     check=False)
        assert result.returncode == 0, (command, result.stderr)
        outputs.append(result.stdout)
    shown = outputs[1]
    assert "final_acc" in shown and "student_acc" in shown and "src/" not in shown


def test_quantize_settings_do_not_reexport_the_teacher(repo):
    set_params(repo, {"quantize": {"calibration_method": "percentile"}})
    status = dvc(repo, "status").stdout
    assert "quantize:" in status and "export_onnx@" not in status, status
    set_params(repo, {"quantize": {"calibration_method": "minmax"}})


def test_nothing_within_budget_writes_the_report_then_fails(repo):
    set_params(repo, {"select": {"max_file_bytes": 1}})
    result = dvc(repo, "repro", check=False)
    out = result.stdout + result.stderr
    assert result.returncode != 0
    assert "error: no model shipped: no model within 100 points of the teacher and file <= 1 " \
           "bytes; the closest is" in out and "reports/summary.md" in out
    assert sorted(f.name for f in (repo / "models/final").iterdir()) == ["NO_MODEL.md"]
    final = json.loads((repo / "metrics/final.json").read_text())
    assert final["final_model"] == "none" and final["final_within_budget"] is False
    summary = (repo / "reports/summary.md").read_text()
    assert "## No model within the budget" in summary and "over budget by" in summary
    # the honest signal persists: the next repro runs the report again and fails again
    again = dvc(repo, "repro", check=False)
    assert again.returncode != 0 and ran_stages(again.stdout) == {"report"}
    # a budget that fits ships a model again
    set_params(repo, {"select": {"max_file_bytes": 0}})
    assert dvc(repo, "repro", check=False).returncode == 0
    assert (repo / "models/final" / CARD_FILE).is_file()
