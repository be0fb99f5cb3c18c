"""Pruning at a fixed ratio (shrinkflow.compress.prune) on tiny inputs: it shrinks, stays runnable,
round-trips through files and ONNX; the sensitivity scan and the fine-tune."""

from __future__ import annotations

import copy

import numpy as np
import onnxruntime as ort
import pytest
import torch
from tiny_models import FULL, downsampled_spec
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
from shrinkflow.core.errors import ShrinkflowError
from shrinkflow.model_files.pt import load_model, save_model
from shrinkflow.nets.zoo import build_model, count_macs, count_params, final_linear, make_spec
from shrinkflow.params.common import ModelSpec, TrainConfig
from shrinkflow.params.prune import PruneParams
from unit.compress.pruning import SHAPE, fresh, params, quiet, spec_for

# torchvision models take seconds each (import, tracing, ONNX export): the fast loop skips them
ARCHS = ["cnn", pytest.param("resnet18", marks=pytest.mark.slow),
         pytest.param("mobilenet_v2", marks=pytest.mark.slow)]


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


def test_iterative_steps_prune_in_steps_to_the_same_width():
    one, three = fresh("cnn"), fresh("cnn")
    run_pruning(one, SHAPE, params(ratio=0.5), log=quiet)
    after_each_step = []

    def record(model, step, epochs):  # the fine-tune hook runs after every pruning step
        after_each_step.append((step, count_params(model)))
        return []

    run_pruning(three, SHAPE, params(ratio=0.5, iterative_steps=3, train=TrainConfig(epochs=3)),
                finetune=record, log=quiet)
    steps, sizes = zip(*after_each_step, strict=True)
    assert steps == (1, 2, 3) and sizes[0] > sizes[1] > sizes[2]
    assert count_params(one) == count_params(three) == sizes[2]


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


def test_a_downsampled_student_saves_loads_and_prunes(tmp_path):
    torch.manual_seed(0)
    model = build_model(downsampled_spec(8)).eval()
    x = torch.rand(5, *FULL)
    save_model(tmp_path / "s.pt", model, downsampled_spec(8), role="student")
    reloaded, _ = load_model(tmp_path / "s.pt", role="student")
    torch.testing.assert_close(reloaded(x), model(x), atol=0, rtol=0)
    before = count_macs(reloaded, FULL)
    run_pruning(reloaded, FULL, PruneParams(sensitivity=False, round_to=1, ratio=0.5,
                                             iterative_steps=1), log=lambda _: None)
    assert count_macs(reloaded, FULL) < 0.6 * before
    assert reloaded(x).shape == (5, 4)
