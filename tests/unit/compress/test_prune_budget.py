"""Budget-mode pruning (prune.ratio: auto, shrinkflow.compress.prune_budget): a plan of steps that
follows the sensitivity scan, and a loop that keeps the last step within the accuracy budget."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from shrinkflow.compress.prune import (
    group_roots,
    model_accuracy,
    resolve_ignored,
    sensitivity_scan,
)
from shrinkflow.compress.prune_budget import (
    current_widths,
    make_plan,
    plan_steps,
    prune_to_widths,
    run_budget_pruning,
    step_loop,
    width_options,
)
from shrinkflow.params.prune import PruneParams
from unit.compress.pruning import SHAPE, fresh, params, quiet


def auto_params(**kw) -> PruneParams:
    kw.setdefault("round_to", 1)
    kw.setdefault("iterative_steps", 3)
    return PruneParams(ratio="auto", sensitivity_ratios=[0.25, 0.5, 0.75], **kw)


def fake_scan(layers: list[str], sensitivity: dict[str, float], base_acc: float = 0.9,
              base_macs: int = 100_000) -> list[dict]:
    """Scan rows where pruning a layer by r costs r * sensitivity points and saves the same
    MACs whatever the layer, so only the sensitivity can order the layers."""
    return [{"layer": layer, "ratio": r, "accuracy": base_acc - r * sensitivity[layer] / 100,
             "macs": base_macs - int(r * 10_000)} for layer in layers for r in (0.25, 0.5, 0.75)]


def ratios_of(widths: dict[str, int], full: dict[str, int]) -> dict[str, float]:
    return {k: 1 - widths[k] / full[k] for k in full}


def test_step_loop_stops_at_the_last_step_within_budget():
    model = nn.Linear(1, 1, bias=False)
    accs = iter([0.985, 0.98, 0.97, 0.96])  # drops 0.5, 1.0, 2.0, 3.0 points from 0.99
    pruned_at = []

    def prune(m, widths, step):
        pruned_at.append(step)
        m.weight.data.fill_(step)  # marks which step's model comes back

    plans = [({"w": 4 - i}, 0.0, float(i)) for i in range(4)]
    best, chosen, reason, rows, _, _ = step_loop(model, plans, prune, lambda m: next(accs), 0.99,
                                                 1.5, log=quiet)
    assert chosen == 2 and float(best.weight.detach()) == 2.0
    assert pruned_at == [1, 2, 3]  # step 3 is over budget: step 4 is never tried
    assert "step 3" in reason and "kept step 2" in reason
    assert [r["within_budget"] for r in rows] == [True, True, True, False]
    assert [r["val_drop_points"] for r in rows] == pytest.approx([0.0, 0.5, 1.0, 2.0])


def test_step_loop_keeps_every_step_when_all_fit():
    accs = iter([0.99, 0.985])
    best, chosen, reason, rows, _, _ = step_loop(
        nn.Linear(1, 1), [({"w": 2}, 0, 1), ({"w": 1}, 0, 2)], lambda m, w, s: None,
        lambda m: next(accs), 0.99, 1.0, log=quiet)
    assert chosen == 2 and reason.startswith("all 2 steps") and len(rows) == 3


def test_per_layer_ratios_follow_the_sensitivity_ranking():
    model = fresh("cnn")
    layers = group_roots(model, SHAPE, resolve_ignored(model, []))
    sensitivity = {layer: float(s) for layer, s in zip(layers, [9, 1, 5, 3, 7, 2], strict=False)}
    full, plans, _ = make_plan(model, SHAPE, auto_params(), fake_scan(layers, sensitivity), 0.9,
                               log=quiet)
    assert len(plans) == 3
    for widths, _, _ in plans:
        r = ratios_of(widths, full)
        for a in layers:
            for b in layers:
                if sensitivity[a] < sensitivity[b]:
                    assert r[a] >= r[b], (a, b, r)
    first = ratios_of(plans[0][0], full)
    assert first[min(sensitivity, key=sensitivity.get)] > 0  # the least sensitive goes first
    assert first[max(sensitivity, key=sensitivity.get)] == 0
    last = ratios_of(plans[-1][0], full)
    assert max(last.values()) <= 0.75 + 1e-9  # never beyond what the scan covered


def test_latency_target_prunes_where_latency_is_saved():
    model = fresh("cnn")
    layers = group_roots(model, SHAPE, resolve_ignored(model, []))
    slow = layers[2]

    def fake_latency(models: list[nn.Module]) -> list[float]:  # only `slow`'s width costs time
        return [0.1 + 0.01 * current_widths(m, [slow])[slow] for m in models]

    flat = fake_scan(layers, dict.fromkeys(layers, 1.0))
    full, plans, table = make_plan(model, SHAPE, auto_params(target="latency"), flat, 0.9,
                                   measure=fake_latency, log=quiet)
    assert table[0]["layer"] == "" and {r["layer"] for r in table[1:]} <= set(layers)
    first = ratios_of(plans[0][0], full)
    assert first[slow] == max(first.values()) > 0
    assert all(v == 0 for k, v in first.items() if k != slow)


def test_plan_steps_keep_a_cheap_first_move_as_its_own_step():
    # (layer, width, total predicted drop, total saving) after each move
    moves = [("b", 24, 9.9, 56), ("a", 8, 65, 186), ("b", 16, 100, 242), ("b", 8, 120, 290)]
    full = {"a": 16, "b": 32}
    four = [widths for widths, _, _ in plan_steps(full, moves, 4)]
    assert four[0] == {"a": 16, "b": 24}  # 56 is nearer the first goal (72.5) than 186
    assert four[-1] == {"a": 8, "b": 8} and len(four) == 4
    assert [w for w, _, _ in plan_steps(full, moves, 1)] == [{"a": 8, "b": 8}]


def test_width_options_are_multiples_of_round_to_within_the_scanned_range():
    assert width_options(32, 8, 0.75) == [24, 16, 8]
    assert width_options(16, 8, 0.25) == []  # 12 is not a multiple of 8
    assert width_options(8, 8, 0.75) == []  # never below round_to
    assert width_options(10, 1, 0.5) == [9, 8, 7, 6, 5]


def test_prune_to_widths_is_exact():
    model = fresh("cnn")
    layers = group_roots(model, SHAPE, resolve_ignored(model, []))
    target = {layers[0]: 5, layers[3]: 9}
    prune_to_widths(model, SHAPE, target, params(), seed=0)
    assert {k: current_widths(model, layers)[k] for k in target} == target
    assert model(torch.rand(2, *SHAPE)).shape == (2, 4)


def test_auto_with_zero_budget_keeps_the_student_and_says_so(trained_cnn):
    model = copy.deepcopy(trained_cnn)

    def never(_):
        raise AssertionError("a zero budget needs no evaluation")

    out = run_budget_pruning(model, (1, 8, 8), auto_params(), [], never, 0.9, 0,
                             log=quiet)
    assert out.chosen_step == 0 and len(out.steps) == 1
    assert "\n" not in out.stop_reason and "budget.max_drop_points is 0" in out.stop_reason
    assert "unpruned student" in out.stop_reason
    for key, value in trained_cnn.state_dict().items():
        assert torch.equal(out.model.state_dict()[key], value)


def test_auto_end_to_end_on_a_tiny_model(tiny_data, trained_cnn):
    model = copy.deepcopy(trained_cnn)
    shape = (1, 8, 8)
    base = model_accuracy(model, tiny_data.val)
    rows = sensitivity_scan(model, shape, tiny_data.val, [0.25, 0.5, 0.75], log=quiet)
    out = run_budget_pruning(model, shape, auto_params(), rows,
                             lambda m: model_accuracy(m, tiny_data.val), base, 100, log=quiet)
    assert out.chosen_step == len(out.steps) - 1 >= 1
    macs = [r["macs"] for r in out.steps]
    assert macs == sorted(macs, reverse=True) and macs[-1] < macs[0]
    assert out.model(torch.rand(2, *shape)).shape == (2, 4)
