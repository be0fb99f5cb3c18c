"""The student ladder end to end, on a copy of the session's reproduced tiny project: two rungs
(params ladder.rungs), each its own distill_rung@NAME stage; under a budget the small rung misses
and the big one meets, select_final ships a rung, and its from-scratch control
(rung_scratch@NAME) trains; a third rung, added, trains only itself.
"""

import json

import pytest
from pipeline_repo import dvc, ran_stages, set_params

pytestmark = pytest.mark.slow  # end to end: real stage processes

# widths per rung: 2 channels cannot learn the digits in one epoch, 32 can (teacher: [8, 16])
RUNGS = {"w2": {"widths": [2, 2]}, "w32": {"widths": [32, 32]}}
NEW_RUNG = {"w16": {"widths": [16, 16]}}
RUNG_STAGES = {f"distill_rung@{name}" for name in RUNGS}
SCRATCH_STAGES = {f"rung_scratch@{name}" for name in RUNGS}
AFTER_RUNGS = {"benchmark", "select_final", "report"}


def accuracies(repo) -> dict[str, float]:
    final = json.loads((repo / "metrics/final.json").read_text())
    return {k.removesuffix("_acc"): v for k, v in final.items()
            if k.endswith("_acc") and not k.startswith("final_")}


def test_select_ships_a_bigger_rung_and_a_new_rung_trains_only_itself(reproduced_repo):
    repo = reproduced_repo
    set_params(repo, {"ladder": {"rungs": RUNGS}})
    first = dvc(repo, "repro")
    assert ran_stages(first.stdout) == RUNG_STAGES | SCRATCH_STAGES | AFTER_RUNGS, first.stdout
    for name in RUNGS:
        assert (repo / f"models/ladder/{name}.onnx").is_file()
    acc = accuracies(repo)
    assert {f"rung_{name}" for name in RUNGS} <= set(acc), acc
    teacher, small, best = acc["teacher"], acc["rung_w2"], acc["rung_w32"]
    assert best > small + 0.05, acc  # the premise: the big rung learns what the small cannot

    # One more repro (one, not two: each costs the suite a benchmark and DVC's bookkeeping) with
    # a budget between the small rung's drop and the big rung's, and one more rung: only the
    # new rung trains; the ladder's models are re-timed and chosen again.
    budget = round(100 * (teacher - best), 4) + 0.01
    rungs = {**RUNGS, **NEW_RUNG}
    set_params(repo, {"budget": {"max_drop_points": budget}, "ladder": {"rungs": rungs}})
    second = dvc(repo, "repro")
    ran = ran_stages(second.stdout)
    assert {"distill_rung@w16", "rung_scratch@w16"} | AFTER_RUNGS <= ran, second.stdout
    # no other rung retrains; the other controls rerun only if another model now ships; prune
    # reads budget.max_drop_points (its budget mode) and reruns, to the same file
    assert ran - {"distill_rung@w16", "prune"} - AFTER_RUNGS <= SCRATCH_STAGES | {
        "rung_scratch@w16"}, ran
    final = json.loads((repo / "metrics/final.json").read_text())
    assert "rung_w16_acc" in final
    shipped = final["final_model"]
    selection = json.loads((repo / "metrics/selection.json").read_text())
    assert shipped in ("rung_w16", "rung_w32"), selection["reason"]
    assert final["final_drop_points"] <= budget
    small_row = next(c for c in selection["candidates"] if c["model"] == "rung_w2")
    assert small_row["drop_points"] > budget and not small_row["within_budget"]
    card = json.loads((repo / "models/final/card.json").read_text())
    assert card["model"] == shipped
    summary = (repo / "reports/summary.md").read_text()
    assert "rung_w2" in summary and f"**Final model: `{shipped}`**" in summary
    assert f"**{shipped}** (shipped)" in summary.split("## The student ladder")[1]
    # the shipped rung's control trained (ladder.scratch: shipped); the others' did not
    acc = accuracies(repo)
    for name in rungs:
        control = json.loads((repo / f"metrics/rung_scratch_{name}.json").read_text())
        if f"rung_{name}" != shipped:
            assert control == {}, (name, control)
            continue
        scratch = control[f"{shipped}_scratch_test_acc"]
        assert control[f"{shipped}_kd_gain_points"] == round((acc[shipped] - scratch) * 100, 4)


def test_a_bad_rung_is_one_line_before_any_work(reproduced_repo):
    repo = reproduced_repo
    set_params(repo, {"ladder": {"rungs": {"w4": {"widths": [4, 4], "depht": 3}}}})
    result = dvc(repo, "repro", "distill_rung@w4", check=False)
    assert result.returncode != 0
    out = result.stdout + result.stderr
    assert "ladder.rungs.w4.depht" in out or ("ladder" in out and "depht" in out), out
    assert not (repo / "models/ladder/w4.pt").exists()


def test_a_rung_that_cannot_reach_the_teacher_stops_early_and_is_still_measured(reproduced_repo):
    repo = reproduced_repo
    set_params(repo, {"ladder": {"rungs": {"w2": {"widths": [2, 2]}},
                                 "early_stop": {"after_epochs": 1, "points_behind": 0.01}},
                      "distill": {"train": {"epochs": 4}}})
    result = dvc(repo, "repro", "-s", "distill_rung@w2")  # this stage alone: the rung's epochs
    assert "[rung_w2] stopped after epoch 1/4: val accuracy projected" in result.stdout
    trained = json.loads((repo / "metrics/rung_w2.json").read_text())
    assert trained["rung_w2_epochs_trained"] == 1 and trained["rung_w2_stopped_early"] == 1
    assert "rung_w2_acc" in json.loads((repo / "metrics/eval_rung_w2.json").read_text())
    assert (repo / "models/ladder/w2.onnx").is_file()
