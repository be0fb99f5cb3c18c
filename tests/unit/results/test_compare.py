"""Comparing experiments (shrinkflow.results.compare) on a saved `dvc exp show --json` (DVC 3.67,
from a tiny real repo, trimmed)."""

from __future__ import annotations

import copy
import json
import math

import pytest
from pipeline_repo import ROOT

from shrinkflow.core.errors import ShrinkflowError
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
    assert r03["metrics"]["final_file_bytes"] == 7000 and r03["baseline"] == "master"
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
    assert df.loc["r07", "speedup"] == pytest.approx(13.3) and df.loc["r07", "model"] == "quantized"
    assert df.loc["r07", "acc_low"] < 0.88 < df.loc["r07", "acc_high"]
    table = experiment_table(parse_exp_show(payload))
    tight = answer(table, 3.0)
    assert tight[0].startswith("1 of 3") and all("`r03`" in line for line in tight[1:])
    loose = answer(table, 10.0)
    fastest = next(line for line in loose if line.startswith("Fastest"))
    assert "`r07`" in fastest and "13.30x" in fastest and "tie" not in fastest
    # accuracies 88-92 % on 100 test images: the most accurate is a tie with the others
    accurate = next(line for line in loose if line.startswith("Most accurate"))
    assert "`r03`" in accurate and "A tie (inside the noise) with `master`, `r07`" in accurate
    assert "no experiment qualifies" in answer(table, 1.0)[1]


def test_a_faster_experiment_inside_the_noise_is_called_a_tie(payload):
    exp = payload[1]["experiments"][1]["revs"][0]["data"]["metrics"]["metrics/final.json"]
    exp["data"].update(final_speedup=8.2, final_speedup_low=7.9, final_speedup_high=8.5)
    fastest = next(line for line in answer(experiment_table(parse_exp_show(payload)), 10.0)
                   if line.startswith("Fastest"))
    assert "`r07`" in fastest and "tie" not in fastest  # 13.3x is clear of 8.2x
    exp["data"].update(final_speedup=13.1, final_speedup_low=12.8, final_speedup_high=13.4)
    fastest = next(line for line in answer(experiment_table(parse_exp_show(payload)), 10.0)
                   if line.startswith("Fastest"))
    assert "A tie (inside the noise) with `r03`" in fastest


def test_write_compare(payload, tmp_path):
    df = experiment_table(parse_exp_show(payload))
    page, chart = write_compare(df, tmp_path, max_drop=5.0)
    text = page.read_text()
    assert len([line for line in text.splitlines() if line.startswith("| ")]) == 1 + 3
    assert "prune.ratio=0.3" in text and "](compare_pareto.png)" in text
    assert chart is not None and chart.stat().st_size > 5000




def test_budget_sweep_draws_latency_vs_budget(payload, tmp_path):
    # the fixture's two experiments become a budget-mode sweep (plus the baseline at 2 points)
    budgets = iter([2.0, 0.5, 1.0])
    for commit in payload:
        states = [commit] + [e["revs"][0] for e in commit.get("experiments") or []]
        for state in states:
            if commit.get("rev") == "workspace":
                continue
            params = state["data"]["params"]["params.yaml"]["data"]
            params["budget"] = {"max_drop_points": next(budgets)}
    df = experiment_table(parse_exp_show(payload))
    assert sorted(df["budget_points"]) == [0.5, 1.0, 2.0]
    page, _ = write_compare(df, tmp_path, max_drop=5.0)
    assert "](compare_budget.png)" in page.read_text() and "budget (pts)" in page.read_text()
    assert (tmp_path / "compare_budget.png").stat().st_size > 5000


def test_experiments_at_one_budget_draw_no_budget_curve(payload, tmp_path):
    df = experiment_table(parse_exp_show(payload))
    assert df["budget_points"].isna().all()
    page, _ = write_compare(df, tmp_path, max_drop=5.0)
    assert "compare_budget" not in page.read_text()
    assert not (tmp_path / "compare_budget.png").exists()


def test_one_named_model_compares_its_accuracy_with_an_interval(payload):
    df = experiment_table(parse_exp_show(payload), model="quantized").set_index("name")
    assert df.loc["r03", "accuracy"] == pytest.approx(0.92)
    assert df.loc["r03", "acc_low"] < 0.92 < df.loc["r03", "acc_high"]  # from test_images
    assert math.isnan(df.loc["r03", "speedup"])  # latencies are not DVC metrics


def as_detection(payload: list[dict]) -> list[dict]:
    """The fixture's experiments as detection runs: metrics/final.json in mAP, no interval."""
    for entry in payload:
        runs = [entry] + [e["revs"][0] for e in entry.get("experiments") or []]
        for run in runs:
            final = ((run.get("data") or {}).get("metrics") or {}).get("metrics/final.json")
            if final:
                final["data"] = {k.replace("_acc", "_map"): (None if k.startswith("final_acc_")
                                                              else v)
                                 for k, v in final["data"].items()}
    return payload


def test_detection_experiments_compare_on_map(payload, tmp_path):
    df = experiment_table(parse_exp_show(as_detection(payload)))
    assert df.attrs["score"].field == "map"
    r03 = df.set_index("name").loc["r03"]
    assert r03["accuracy"] == pytest.approx(0.92) and r03["drop_points"] == pytest.approx(3.0)
    assert math.isnan(r03["acc_low"])  # mAP has no interval
    lines = answer(df, 10.0)
    assert "within 10 mAP points" in lines[0]
    best = next(line for line in lines if line.startswith("Highest mAP"))
    assert "`r03`" in best and "92.00 (x 100)" in best and "tie" not in best
    page, _ = write_compare(df, tmp_path, max_drop=5.0)
    assert "| mAP x 100 |" in page.read_text() and "without an interval" in page.read_text()


def test_experiments_of_both_tasks_are_one_line(payload):
    mixed = as_detection(copy.deepcopy(payload))
    mixed[1]["experiments"] = payload[1]["experiments"]  # classification runs beside them
    with pytest.raises(ShrinkflowError, match="both classification .* and detection"):
        experiment_table(parse_exp_show(mixed))
