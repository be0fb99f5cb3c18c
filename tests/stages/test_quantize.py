"""stages/quantize.py run in this process on a temporary workspace: its inputs checked before any
work, its outputs and flat metrics, and QAT mode."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
import torch
import yaml
from pipeline_repo import ROOT, run_stage_main, shipped_params
from prepared_files import write_prepared_dir
from tiny_models import train_cnn

from shrinkflow.compress.quantize import qat_finetune
from shrinkflow.core.errors import ShrinkflowError
from shrinkflow.data.prepared import load_prepared
from shrinkflow.measure.metrics import accuracy, logit_parity
from shrinkflow.model_files.open import open_model
from shrinkflow.model_files.pt import save_model
from shrinkflow.training.loop import predict

STAGE = ROOT / "stages" / "quantize.py"


@pytest.fixture(scope="module")
def model_and_spec(tiny_data_shared):
    """The stage's input model, trained once for the module; tests save it, never change it."""
    return train_cnn(tiny_data_shared, [32, 64])


def _run_stage() -> None:
    run_stage_main(STAGE)


@pytest.fixture
def workspace(tmp_path, monkeypatch, tiny_data):
    """A pipeline folder with prepared data and params.yaml, but no input model yet."""
    write_prepared_dir(tmp_path / "data" / "prepared", tiny_data)
    params = shipped_params({"quantize": {"input": "pruned", "calibration_samples": 64}})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_stage_missing_input_model_names_file_and_stage(workspace):
    with pytest.raises(ShrinkflowError, match=r"models/pruned\.pt.*'prune' stage"):
        _run_stage()


def test_stage_refuses_a_model_saved_as_another_role(workspace, model_and_spec):
    save_model(workspace / "models" / "pruned.pt", *model_and_spec, role="student")
    with pytest.raises(ShrinkflowError, match=r"models/pruned\.pt: expected the 'pruned' model"):
        _run_stage()
    assert sorted(p.name for p in (workspace / "models").iterdir()) == ["pruned.pt"]


def test_stage_bad_calibration_count_fails_before_writing(workspace, model_and_spec):
    save_model(workspace / "models" / "pruned.pt", *model_and_spec, role="pruned")
    (workspace / "params.yaml").write_text(
        yaml.safe_dump(shipped_params({"quantize": {"calibration_samples": 10_000}}))
    )
    with pytest.raises(ShrinkflowError, match="calibration_samples = 10000"):
        _run_stage()
    assert sorted(p.name for p in (workspace / "models").iterdir()) == ["pruned.pt"]


def test_stage_writes_all_outputs_and_flat_metrics(workspace, model_and_spec, capsys):
    save_model(workspace / "models" / "pruned.pt", *model_and_spec, role="pruned")
    _run_stage()
    for out in ("pruned.onnx", "quantized.onnx", "quantized_torch.pt"):
        assert (workspace / "models" / out).stat().st_size > 0
    metrics = json.loads((workspace / "metrics" / "quantize.json").read_text())
    assert all(k.startswith(("quantize_", "quantized_")) for k in metrics)
    assert all(isinstance(v, (int, float, str)) and not isinstance(v, bool)
               for v in metrics.values())
    assert metrics["quantize_input"] == "pruned" and metrics["quantize_mode"] == "static"
    assert metrics["quantize_onnx_agreement"] == 1.0
    assert metrics["quantize_int8_agreement"] >= 0.9
    assert metrics["quantize_size_ratio"] < 0.6
    # evaluate reopens the stored torch_int8 file; it must score what the stage reported
    x, y = load_prepared(workspace / "data" / "prepared").test
    torch_int8 = open_model(workspace / "models" / "quantized_torch.pt")
    assert torch_int8.meta["role"] == "quantized_torch"
    assert accuracy(torch_int8.predict(x), y) == pytest.approx(
        metrics["quantized_torch_test_acc"], abs=1e-6)
    model = model_and_spec[0]
    assert accuracy(predict(model, x), y) == pytest.approx(
        metrics["quantize_fp32_test_acc"], abs=1e-6)
    assert "quantize" in capsys.readouterr().out


def _qat_params(workspace: Path) -> None:
    params = shipped_params({"quantize": {"input": "pruned", "calibration_samples": 64,
                                          "mode": "qat",
                                          "qat": {"train": {"device": "cpu", "batch_size": 64}}}})
    (workspace / "params.yaml").write_text(yaml.safe_dump(params))


def test_stage_qat_without_teacher_names_it(workspace, model_and_spec):
    save_model(workspace / "models" / "pruned.pt", *model_and_spec, role="pruned")
    _qat_params(workspace)
    with pytest.raises(ShrinkflowError, match=r"quantize\.mode = 'qat' needs models/teacher\.pt"):
        _run_stage()
    assert sorted(p.name for p in (workspace / "models").iterdir()) == ["pruned.pt"]


@pytest.mark.slow  # two small trainings and a QAT epoch through the stage: ~28 s at load ~20
def test_stage_qat_reports_parity_with_the_fake_quantized_model(workspace, model_and_spec,
                                                                tiny_data, monkeypatch):
    """The suite's one QAT run (torchao's prepare exports 42 patterns each time: 7 CPU-s), so it
    checks ``compress.quantize.qat_finetune`` itself too, through what the stage passed it and got
    back: the input untouched, KD in fit's loop, the weights moved, and the int8 file following
    the fake-quantized model that follows the fp32 one."""
    save_model(workspace / "models" / "pruned.pt", *model_and_spec, role="pruned")
    save_model(workspace / "models" / "teacher.pt", *train_cnn(tiny_data, [16, 32]),
               role="teacher")
    _qat_params(workspace)
    calls = []

    def spy(model, *args, **kwargs):
        before = {k: v.clone() for k, v in model.state_dict().items()}
        result = qat_finetune(model, *args, **kwargs)
        calls.append((model, before, result))
        return result

    monkeypatch.setattr("shrinkflow.compress.quantize.qat_finetune", spy)
    _run_stage()
    metrics = json.loads((workspace / "metrics" / "quantize.json").read_text())
    assert metrics["quantize_mode"] == "qat" and metrics["quantize_qat_epochs"] == 1
    assert metrics["quantize_qat_int8_agreement"] >= 0.9
    x, y = load_prepared(workspace / "data" / "prepared").test
    int8 = open_model(workspace / "models" / "quantized.onnx")
    assert (int8.precision, int8.meta["shrinkflow.quantization"]) == ("int8", "qat-minmax")
    assert accuracy(int8.predict(x), y) == pytest.approx(metrics["quantized_test_acc"], abs=1e-6)
    assert metrics["quantize_qat_int8_gap_points"] == pytest.approx(
        100 * (metrics["quantize_qat_fake_quant_test_acc"] - metrics["quantized_test_acc"]),
        abs=1e-3)

    [(model, before, qat)] = calls
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # a copy
    assert len(qat.history) == 1 and "train_kd" in qat.history[0]  # KD ran in fit's loop
    tuned = qat.fp32.state_dict()
    assert any(not torch.equal(before[k], tuned[k]) for k in before)  # the weights moved
    proto = onnx.load(str(workspace / "models" / "quantized.onnx"))
    assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in proto.graph.node}
    assert any(i.data_type == onnx.TensorProto.INT8 for i in proto.graph.initializer)
    fake_quant = predict(qat.fake_quant, x, device=torch.device("cpu"))
    assert logit_parity(fake_quant, int8.predict(x))["agreement"] >= 0.9
    assert abs(accuracy(fake_quant, y) - metrics["quantized_test_acc"]) <= 0.1
    assert logit_parity(predict(qat.fp32, x), fake_quant)["agreement"] >= 0.9
