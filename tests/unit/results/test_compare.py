"""Comparing experiments (shrinkflow.results.compare) on a saved `dvc exp show --json` (DVC 3.67,
from a tiny real repo, trimmed)."""

from __future__ import annotations

import copy
import json
import math

import pytest
from pipeline_repo import ROOT

from shrinkflow.results.compare import (
    answer,
    experiment_table,
    flatten,
    parse_exp_show,
    write_compare,
)

FIXTURE = ROOT / "tests" / "data" / "exp_show.json"


@pytest.fixture
def payload() -> list[dict]:
    return json.loads(FIXTURE.read_text())


def test_flatten_nested_params():
    assert flatten({"a": {"b": 1, "c": {"d": [1, 2]}}, "e": "x"}) == {
        "a.b": 1, "a.c.d": [1, 2], "e": "x"}


def test_parse_fixture(payload):
    records = parse_exp_show(payload)
    assert [r["name"] for r in records] == ["master", "r07", "r03"]  # workspace skipped
    master, r07, r03 = records
    assert master["is_baseline"] and not r07["is_baseline"]
    assert master["params"] == {"prune.ratio": 0.5, "distill.T": 4.0}
    assert r07["changed"] == {"prune.ratio": 0.7, "distill.T": 2}
    assert r03["changed"] == {"prune.ratio": 0.3}
    assert r03["metrics"]["quantized_macs"] == 700 and r03["baseline"] == "master"
    with_ws = parse_exp_show(payload, include_workspace=True)
    assert with_ws[0]["name"] == "workspace"


def test_failed_experiment_kept_with_error(payload):
    failed = copy.deepcopy(payload[1]["experiments"][0])
    failed["name"] = "broken"
    failed["revs"][0].update(name="broken", data=None,
                             error={"msg": "stage prune failed", "type": "ReproductionError"})
    payload[1]["experiments"].append(failed)
    df = experiment_table(parse_exp_show(payload))
    row = df.set_index("name").loc["broken"]
    assert row["error"] == "stage prune failed" and math.isnan(row["accuracy"])
    assert "broken" not in " ".join(answer(df, 100.0))  # never the winner


def test_table_and_answers(payload):
    df = experiment_table(parse_exp_show(payload)).set_index("name")
    assert df.loc["r03", "drop_points"] == pytest.approx(3.0)
    assert df.loc["r07", "latency_ms"] == pytest.approx(3.0) and df.loc["r07", "macs"] == 300
    assert df.attrs["batch"] == 64
    table = experiment_table(parse_exp_show(payload))
    tight = answer(table, 3.0)
    assert tight[0].startswith("1 of 3") and all("`r03`" in line for line in tight[1:])
    loose = answer(table, 10.0)
    assert "`r07`" in loose[3] and "3.000 ms" in loose[3]  # fastest
    assert "no experiment qualifies" in answer(table, 1.0)[1]


def test_write_compare(payload, tmp_path):
    df = experiment_table(parse_exp_show(payload))
    page, chart = write_compare(df, tmp_path, max_drop=5.0)
    text = page.read_text()
    assert len([line for line in text.splitlines() if line.startswith("| ")]) == 1 + 3
    assert "prune.ratio=0.3" in text and "](compare_pareto.png)" in text
    assert chart is not None and chart.stat().st_size > 5000


def test_latency_is_the_models_own_largest_batch(payload):
    # keys of another model, or of a field other than p50, must not decide the batch size
    metrics = payload[1]["experiments"][0]["revs"][0]["data"]["metrics"]["metrics/benchmark.json"]
    metrics["data"].update({"bench_quantized_b8_p50_ms": 0.5, "bench_teacher_b256_p50_ms": 9.0,
                            "bench_quantized_b512_speedup_vs_teacher": 2.0})
    df = experiment_table(parse_exp_show(payload)).set_index("name")
    assert df.attrs["batch"] == 64
    assert df.loc["r07", "latency_ms"] == pytest.approx(3.0)


def test_budget_sweep_draws_latency_vs_budget(payload, tmp_path):
    # the fixture's two experiments become a budget-mode sweep (plus the baseline at 2 points)
    budgets = iter([2.0, 0.5, 1.0])
    for commit in payload:
        states = [commit] + [e["revs"][0] for e in commit.get("experiments") or []]
        for state in states:
            if commit.get("rev") == "workspace":
                continue
            params = state["data"]["params"]["params.yaml"]["data"]
            params["prune"] = {"ratio": "auto", "max_drop_points": next(budgets)}
    df = experiment_table(parse_exp_show(payload))
    assert sorted(df["budget_points"]) == [0.5, 1.0, 2.0]
    page, _ = write_compare(df, tmp_path, max_drop=5.0)
    assert "](compare_budget.png)" in page.read_text() and "prune budget (pts)" in page.read_text()
    assert (tmp_path / "compare_budget.png").stat().st_size > 5000


def test_fixed_ratio_experiments_draw_no_budget_curve(payload, tmp_path):
    df = experiment_table(parse_exp_show(payload))
    assert df["budget_points"].isna().all()
    page, _ = write_compare(df, tmp_path, max_drop=5.0)
    assert "compare_budget" not in page.read_text()
    assert not (tmp_path / "compare_budget.png").exists()


def test_a_benchmark_only_model_takes_the_accuracy_and_macs_of_its_weights(payload):
    # pruned_onnx-like: its own latency, the evaluated model's accuracy and MACs, no file size
    for commit in payload:
        for exp in commit.get("experiments") or []:
            bench = exp["revs"][0]["data"]["metrics"]["metrics/benchmark.json"]["data"]
            bench["bench_quantized_onnx_b64_p50_ms"] = 0.25
    own = experiment_table(parse_exp_show(payload)).set_index("name")
    df = experiment_table(parse_exp_show(payload), model="quantized_onnx",
                          accuracy_of="quantized").set_index("name")
    assert df.loc["r07", "accuracy"] == own.loc["r07", "accuracy"]
    assert df.loc["r07", "macs"] == own.loc["r07", "macs"] == 300
    assert df.loc["r07", "latency_ms"] == pytest.approx(0.25)
    assert math.isnan(df.loc["r07", "file_bytes"])
