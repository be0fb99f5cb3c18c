"""Pruning on tiny inputs: it shrinks, stays runnable, round-trips through files and ONNX."""

from __future__ import annotations

import copy
import csv
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
import yaml
from pipeline_repo import run_stage_main, shipped_params
from prepared_files import write_prepared_dir
from torch import nn

from shrinkflow.compress.prune import (
    evenly_spaced,
    group_roots,
    make_finetune,
    model_accuracy,
    resolve_ignored,
    run_pruning,
    sensitivity_scan,
    sparsity,
    split_epochs,
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
from shrinkflow.core.errors import ShrinkflowError
from shrinkflow.model_files.pt import load_model, save_model
from shrinkflow.nets.zoo import build_model, count_macs, count_params, final_linear, make_spec
from shrinkflow.params.common import ModelSpec, TrainConfig
from shrinkflow.params.load import validate_section
from shrinkflow.params.prune import PruneParams
from shrinkflow.training.loop import fit

SHAPE = (3, 8, 8)
# torchvision models take seconds each (import, tracing, ONNX export): the fast loop skips them
ARCHS = ["cnn", pytest.param("resnet18", marks=pytest.mark.slow),
         pytest.param("mobilenet_v2", marks=pytest.mark.slow)]


def spec_for(arch: str, channels: int = 3, classes: int = 4) -> dict:
    return {
        "arch": arch, "widths": [8, 16, 32], "depth": 2, "width_mult": 0.5,
        "in_channels": channels, "num_classes": classes,
        "mean": [0.3] * channels, "std": [0.3] * channels,
    }


def fresh(arch: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(spec_for(arch)).eval()


def quiet(_: str) -> None:
    pass


def params(**kw) -> PruneParams:
    """Exact ratios (round_to=1): the tiny test models have fewer channels than 8. One step at
    ratio 0.5 unless a test says otherwise (no fine-tune: these tests pass no callback)."""
    kw.setdefault("round_to", 1)
    kw.setdefault("ratio", 0.5)
    kw.setdefault("iterative_steps", 1)
    return PruneParams(sensitivity=False, **kw)


@pytest.fixture(scope="module")
def trained_cnn(tiny_data_shared) -> nn.Module:
    """A 1-channel cnn trained once for the module; tests use it read-only or deep-copy it."""
    torch.manual_seed(0)
    model = build_model(spec_for("cnn", channels=1))
    fit(model, tiny_data_shared.train, tiny_data_shared.val,
        TrainConfig(epochs=6, batch_size=32, lr=0.05), log=quiet)
    return model.eval()


@pytest.mark.parametrize("arch", ARCHS)
def test_structured_shrinks_and_round_trips(arch, tmp_path):
    model = fresh(arch)
    macs, n_params = count_macs(model, SHAPE), count_params(model)
    classes = final_linear(model).out_features
    run_pruning(model, SHAPE, params(ratio=0.5), log=quiet)
    assert count_macs(model, SHAPE) < 0.5 * macs
    assert count_params(model) < 0.6 * n_params
    assert final_linear(model).out_features == classes

    x = torch.rand(5, *SHAPE)
    with torch.no_grad():
        expected = model(x)
    assert expected.shape == (5, classes)
    save_model(tmp_path / "p.pt", model, spec_for(arch), pruned=True)
    reloaded, payload = load_model(tmp_path / "p.pt")  # weights_only=True inside
    assert payload["meta"]["pruned"] is True
    with torch.no_grad():
        assert torch.equal(reloaded(x), expected)

    onnx_path = tmp_path / "p.onnx"
    torch.onnx.export(reloaded, (x,), str(onnx_path), input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "n"}}, dynamo=False)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"x": x.numpy()})
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-4, atol=1e-4)


def test_higher_ratio_removes_more():
    macs = []
    for ratio in (0.25, 0.5, 0.75):
        model = fresh("cnn")
        run_pruning(model, SHAPE, params(ratio=ratio), log=quiet)
        macs.append(count_macs(model, SHAPE))
    assert macs[0] > macs[1] > macs[2]


def test_iterative_steps_reach_the_same_width():
    one, three = fresh("cnn"), fresh("cnn")
    run_pruning(one, SHAPE, params(ratio=0.5), log=quiet)
    run_pruning(three, SHAPE, params(ratio=0.5, iterative_steps=3), log=quiet)
    assert count_params(one) == count_params(three)


@pytest.mark.parametrize("importance", ["l1", "random"])
def test_importance_is_deterministic(importance):
    a, b = fresh("cnn"), fresh("cnn")
    for m in (a, b):
        run_pruning(m, SHAPE, params(importance=importance, seed=3), log=quiet)
    x = torch.rand(4, *SHAPE)
    with torch.no_grad():
        assert torch.equal(a(x), b(x))


def test_random_and_l2_choose_different_channels():
    a, b = fresh("cnn"), fresh("cnn")
    run_pruning(a, SHAPE, params(importance="l2"), log=quiet)
    run_pruning(b, SHAPE, params(importance="random"), log=quiet)
    assert not torch.equal(a.body.features[0].weight, b.body.features[0].weight)


def test_taylor_needs_and_uses_training_data(tiny_data):
    model = build_model(spec_for("cnn", channels=1))
    with pytest.raises(ValueError, match="taylor"):
        run_pruning(model, (1, 8, 8), params(importance="taylor"), log=quiet)
    before = count_macs(model, (1, 8, 8))
    run_pruning(model, (1, 8, 8), params(importance="taylor"), train=tiny_data.train, log=quiet)
    assert count_macs(model, (1, 8, 8)) < 0.5 * before
    assert all(p.grad is None for p in model.parameters())


def test_ignored_layer_keeps_its_channels():
    model = fresh("cnn")
    run_pruning(model, SHAPE, params(ignore_layers=["body.features.3"]), log=quiet)
    assert model.body.features[3].out_channels == 8
    assert model.body.features[0].out_channels == 4


def test_unknown_ignore_layer_names_the_valid_ones():
    model = fresh("cnn")
    with pytest.raises(ShrinkflowError, match=r"prune\.ignore_layers.*body\.features\.0"):
        run_pruning(model, SHAPE, params(ignore_layers=["features.nope"]), log=quiet)
    assert resolve_ignored(model, [])[0] is final_linear(model)


def test_unstructured_gives_sparsity_not_smaller_shapes(tmp_path):
    model = fresh("cnn")
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    head = final_linear(model)
    head_weight = head.weight.detach().clone()
    assert sparsity(model) == 0.0
    run_pruning(model, SHAPE, params(mode="unstructured", ratio=0.6, iterative_steps=2),
                log=quiet)
    assert sparsity(model, exclude=[head]) == pytest.approx(0.6, abs=0.01)
    assert torch.equal(head.weight, head_weight)
    assert {k: v.shape for k, v in model.state_dict().items()} == shapes  # masks removed
    save_model(tmp_path / "u.pt", model, spec_for("cnn"))
    reloaded, _ = load_model(tmp_path / "u.pt")
    assert sparsity(reloaded, exclude=[final_linear(reloaded)]) == pytest.approx(0.6, abs=0.01)


def test_sensitivity_scan_rows_for_each_layer_and_ratio(tiny_data, trained_cnn):
    model = trained_cnn
    original = copy.deepcopy(model.state_dict())
    ratios = [0.25, 0.75]
    rows = sensitivity_scan(model, (1, 8, 8), tiny_data.val, ratios, log=quiet)
    layers = group_roots(model, (1, 8, 8), resolve_ignored(model, []))
    assert len(layers) == 6  # 6 convs; the head is never a root
    assert [(r["layer"], r["ratio"]) for r in rows] == [(n, r) for n in layers for r in ratios]
    # accuracies are of the pruned trials (removing 75% of some layer hurts a trained model),
    # measured on the split given (each is a whole number of its images)
    n_val = len(tiny_data.val[1])
    assert min(r["accuracy"] for r in rows) < model_accuracy(model, tiny_data.val)
    assert all(r["accuracy"] * n_val == pytest.approx(round(r["accuracy"] * n_val), abs=1e-3)
               for r in rows)
    full = count_macs(model, (1, 8, 8))
    for low, high in zip(rows[::2], rows[1::2], strict=True):
        assert full > low["macs"] > high["macs"]
    assert all(torch.equal(v, original[k]) for k, v in model.state_dict().items())


@pytest.mark.slow
def test_sensitivity_scan_caps_layers_on_big_models():
    model = fresh("mobilenet_v2")
    rows = sensitivity_scan(model, SHAPE, (torch.zeros(8, *SHAPE, dtype=torch.uint8),
                                           torch.zeros(8, dtype=torch.long)),
                            [0.5], max_layers=4, log=quiet)
    assert len(rows) == 4
    assert all(r["macs"] < count_macs(model, SHAPE) for r in rows)  # each trial pruned something
    assert evenly_spaced(list("abcdefg"), 3) == ["a", "d", "g"]
    assert evenly_spaced(list("ab"), 5) == ["a", "b"]


def test_epoch_budget_split_across_steps():
    assert split_epochs(8, 3) == [2, 3, 3]
    assert split_epochs(8, 1) == [8]
    assert sum(split_epochs(5, 4)) == 5


def test_finetune_after_pruning_recovers_accuracy(tiny_data, trained_cnn):
    model = copy.deepcopy(trained_cnn)
    trained = model_accuracy(model, tiny_data.test)
    assert trained > 0.6
    tune = TrainConfig(epochs=4, lr=0.02, batch_size=32)
    cfg = PruneParams(ratio=0.75, iterative_steps=2, train=tune)
    finetune = make_finetune(tiny_data.train, tiny_data.val, cfg.train, log=quiet)
    outcome = run_pruning(
        model, (1, 8, 8), cfg, finetune=finetune,
        evaluate=lambda m: model_accuracy(m, tiny_data.test), log=quiet,
    )
    assert outcome.acc_before_finetune is not None
    assert [r["epoch"] for r in outcome.history] == [1, 2, 3, 4]
    assert [r["prune_step"] for r in outcome.history] == [1, 1, 2, 2]
    final = model_accuracy(outcome.model, tiny_data.test)
    assert final > 0.6  # chance is 0.25
    assert final >= outcome.acc_before_finetune


def test_round_to_keeps_channel_counts_multiples_of_it():
    torch.manual_seed(0)
    model = build_model(make_spec(ModelSpec(widths=[32, 64]), 1, 4, [0.5], [0.5])).eval()
    run_pruning(model, (1, 8, 8), params(ratio=0.4, round_to=8), log=quiet)
    widths = [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert all(w % 8 == 0 for w in widths), widths
    assert sum(widths) < 2 * (32 + 64)


# --- budget mode (ratio: auto) ---------------------------------------------------------------


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

    out = run_budget_pruning(model, (1, 8, 8), auto_params(max_drop_points=0), [], never, 0.9,
                             log=quiet)
    assert out.chosen_step == 0 and len(out.steps) == 1
    assert "\n" not in out.stop_reason and "max_drop_points is 0" in out.stop_reason
    assert "unpruned student" in out.stop_reason
    for key, value in trained_cnn.state_dict().items():
        assert torch.equal(out.model.state_dict()[key], value)


def test_auto_end_to_end_on_a_tiny_model(tiny_data, trained_cnn):
    model = copy.deepcopy(trained_cnn)
    shape = (1, 8, 8)
    base = model_accuracy(model, tiny_data.val)
    rows = sensitivity_scan(model, shape, tiny_data.val, [0.25, 0.5, 0.75], log=quiet)
    out = run_budget_pruning(model, shape, auto_params(max_drop_points=100), rows,
                             lambda m: model_accuracy(m, tiny_data.val), base, log=quiet)
    assert out.chosen_step == len(out.steps) - 1 >= 1
    macs = [r["macs"] for r in out.steps]
    assert macs == sorted(macs, reverse=True) and macs[-1] < macs[0]
    assert out.model(torch.rand(2, *shape)).shape == (2, 4)


@pytest.mark.parametrize("key, value", [("ratio", "banana"), ("ratio", 1.5),
                                        ("max_drop_points", -1), ("target", "flops")])
def test_bad_budget_values_name_the_key(key, value):
    raw = PruneParams().model_dump()
    raw[key] = value
    with pytest.raises(ShrinkflowError) as err:
        validate_section("prune", raw, PruneParams)
    assert "\n" not in str(err.value) and f"prune.{key}:" in str(err.value)


def test_auto_needs_structured_mode_and_the_scan():
    raw = {**PruneParams().model_dump(), "ratio": "auto", "sensitivity": False}
    with pytest.raises(ShrinkflowError, match="prune.sensitivity:"):
        validate_section("prune", raw, PruneParams)
    raw = {**PruneParams().model_dump(), "ratio": "auto", "mode": "unstructured"}
    with pytest.raises(ShrinkflowError, match="prune.ratio:"):
        validate_section("prune", raw, PruneParams)


@pytest.mark.parametrize("budget", [0.0, 100.0])
def test_stage_budget_mode_writes_curve_and_reason(budget, tmp_path, monkeypatch, tiny_data,
                                                   capsys):
    write_prepared_dir(tmp_path / "data" / "prepared", tiny_data)
    for role, widths in (("student", [8, 16]), ("teacher", [16, 16])):
        torch.manual_seed(0)
        spec = make_spec(ModelSpec(widths=widths, depth=1), 1, 4, [0.3], [0.3])
        save_model(tmp_path / "models" / f"{role}.pt", build_model(spec), spec, role=role)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(shipped_params({"prune": {
        "ratio": "auto", "max_drop_points": budget, "round_to": 4, "iterative_steps": 2,
        "train": {"epochs": 1, "batch_size": 32, "max_batches": 2, "device": "cpu"}}})))
    monkeypatch.chdir(tmp_path)
    run_stage_main(Path(__file__).resolve().parents[1] / "stages" / "prune.py")
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
