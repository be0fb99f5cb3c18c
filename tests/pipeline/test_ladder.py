"""The student ladder end to end, on a copy of the session's reproduced tiny project: three rungs
(params ladder.rungs), each its own distill_rung@NAME stage; under a budget the smallest rung
misses and a bigger one meets, select_final ships a bigger rung; a new rung trains only itself.
"""

import json

import pytest
from pipeline_repo import dvc, ran_stages, set_params

pytestmark = pytest.mark.slow  # end to end: real stage processes

# widths per rung: 2 channels cannot learn the digits in one epoch, 32 can (teacher: [8, 16])
RUNGS = {"w2": {"widths": [2, 2]}, "w16": {"widths": [16, 16]}, "w32": {"widths": [32, 32]}}
RUNG_STAGES = {f"distill_rung@{name}" for name in RUNGS}
AFTER_RUNGS = {"benchmark", "select_final", "report"}


def accuracies(repo) -> dict[str, float]:
    final = json.loads((repo / "metrics/final.json").read_text())
    return {k.removesuffix("_acc"): v for k, v in final.items()
            if k.endswith("_acc") and not k.startswith("final_")}


def test_select_ships_a_bigger_rung_and_a_new_rung_trains_only_itself(reproduced_repo):
    repo = reproduced_repo
    set_params(repo, {"ladder": {"rungs": RUNGS}})
    first = dvc(repo, "repro")
    assert ran_stages(first.stdout) == RUNG_STAGES | AFTER_RUNGS, first.stdout
    for name in RUNGS:
        assert (repo / f"models/ladder/{name}.onnx").is_file()
    acc = accuracies(repo)
    assert {f"rung_{name}" for name in RUNGS} <= set(acc), acc
    teacher, small = acc["teacher"], acc["rung_w2"]
    best = max(acc[f"rung_{n}"] for n in ("w16", "w32"))
    assert best > small + 0.05, acc  # the premise: a bigger rung learns what the smallest cannot

    # a budget between the smallest rung's drop and the best bigger rung's
    budget = round(100 * (teacher - best), 4) + 0.01
    set_params(repo, {"budget": {"max_drop_points": budget}})
    second = dvc(repo, "repro")
    assert not ran_stages(second.stdout) & RUNG_STAGES, second.stdout
    final = json.loads((repo / "metrics/final.json").read_text())
    selection = json.loads((repo / "metrics/selection.json").read_text())
    assert final["final_model"] in ("rung_w16", "rung_w32"), selection["reason"]
    assert final["final_drop_points"] <= budget
    small_row = next(c for c in selection["candidates"] if c["model"] == "rung_w2")
    assert small_row["drop_points"] > budget and not small_row["within_budget"]
    card = json.loads((repo / "models/final/card.json").read_text())
    assert card["model"] == final["final_model"]
    summary = (repo / "reports/summary.md").read_text()
    assert "rung_w2" in summary and f"**Final model: `{final['final_model']}`**" in summary

    # one more rung: only it trains; the ladder's models are re-timed and chosen again
    set_params(repo, {"ladder": {"rungs": {**RUNGS, "w8": {"widths": [8, 8]}}}})
    third = dvc(repo, "repro")
    assert ran_stages(third.stdout) == {"distill_rung@w8"} | AFTER_RUNGS, third.stdout
    assert "rung_w8_acc" in json.loads((repo / "metrics/final.json").read_text())


def test_a_bad_rung_is_one_line_before_any_work(reproduced_repo):
    repo = reproduced_repo
    set_params(repo, {"ladder": {"rungs": {"w4": {"widths": [4, 4], "depht": 3}}}})
    result = dvc(repo, "repro", "distill_rung@w4", check=False)
    assert result.returncode != 0
    out = result.stdout + result.stderr
    assert "ladder.rungs.w4.depht" in out or ("ladder" in out and "depht" in out), out
    assert not (repo / "models/ladder/w4.pt").exists()
