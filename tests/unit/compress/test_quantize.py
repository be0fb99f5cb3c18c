"""Quantization (shrinkflow.compress.quantize): ONNX Runtime static and dynamic int8, QAT, PyTorch
int8 stored safely, and the parity metrics.

Files are opened and run through ``model_files.open.open_model``, as evaluate and benchmark do."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
import torch
from prepared_files import make_prepared
from tiny_models import FULL, train_cnn

from shrinkflow.compress.quantize import (
    parity_metrics,
    pt2e_export,
    quantize_onnx_dynamic,
    quantize_onnx_static,
    quantize_torch_fx,
    save_torch_int8,
    select_calibration,
    x86_quantizer,
)
from shrinkflow.core.errors import ShrinkflowError
from shrinkflow.measure.metrics import accuracy, logit_parity
from shrinkflow.model_files.export_onnx import export_onnx, read_metadata
from shrinkflow.model_files.open import Runtime, open_model
from shrinkflow.nets.zoo import build_model, count_macs, count_params, make_spec
from shrinkflow.params.common import ModelSpec
from shrinkflow.training.loop import predict

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def model_and_spec(tiny_data_shared):
    """Trained once for the module (3 epochs); tests read it, never change it."""
    # wide enough that int8 weights outweigh the QDQ graph's per-node overhead
    return train_cnn(tiny_data_shared, [32, 64])


@pytest.fixture(scope="module")
def fp32_onnx(tmp_path_factory, model_and_spec) -> Path:
    path = tmp_path_factory.mktemp("fp32") / "fp32.onnx"
    export_onnx(model_and_spec[0], (1, 8, 8), path)
    return path


@pytest.mark.parametrize("method", ["minmax", "entropy", "percentile"])
def test_static_int8_agrees_and_is_smaller(tmp_path, tiny_data, model_and_spec, fp32_onnx, method):
    model, _ = model_and_spec
    out = tmp_path / "int8.onnx"
    quantize_onnx_static(fp32_onnx, out, select_calibration(tiny_data.train[0], 64, 0),
                         per_channel=True, reduce_range=True, method=method)
    x, y = tiny_data.test
    opened = open_model(out)
    ref, int8 = predict(model, x), opened.predict(x)
    assert opened.precision == "int8" and opened.macs == count_macs(model, (1, 8, 8))
    assert logit_parity(ref, int8)["agreement"] >= 0.9
    assert accuracy(int8, y) >= accuracy(ref, y) - 0.1
    assert out.stat().st_size < 0.6 * fp32_onnx.stat().st_size
    proto = onnx.load(str(out))
    ops = {n.op_type for n in proto.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert any(i.data_type == onnx.TensorProto.INT8 for i in proto.graph.initializer)
    assert read_metadata(out)["shrinkflow.macs"] == read_metadata(fp32_onnx)["shrinkflow.macs"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["int8.onnx"]  # no scratch files
    assert sorted(p.name for p in fp32_onnx.parent.iterdir()) == ["fp32.onnx"]


def test_static_rejects_unknown_method(tmp_path, tiny_data, fp32_onnx):
    with pytest.raises(ShrinkflowError, match="calibration_method"):
        quantize_onnx_static(fp32_onnx, tmp_path / "q.onnx", tiny_data.train[0][:8], method="kl")
    assert not (tmp_path / "q.onnx").exists()


def test_dynamic_int8_runs_with_integer_convs(tmp_path, tiny_data, model_and_spec, fp32_onnx):
    model, _ = model_and_spec
    out = tmp_path / "dyn.onnx"
    quantize_onnx_dynamic(fp32_onnx, out)
    ops = {n.op_type for n in onnx.load(str(out)).graph.node}
    assert "ConvInteger" in ops and "DynamicQuantizeLinear" in ops
    x = tiny_data.test[0]
    assert logit_parity(predict(model, x), open_model(out).predict(x))["agreement"] >= 0.9
    assert out.stat().st_size < fp32_onnx.stat().st_size


def test_torch_int8_round_trip_is_exact_and_safe(tmp_path, tiny_data):
    # a "pruned" model: trained at widths [8, 16] but stored under the spec of [16, 32], so the
    # loader must rebuild the smaller layer shapes before re-running prepare/convert
    model, _ = train_cnn(tiny_data, [8, 16])
    base_spec = make_spec(ModelSpec(widths=[16, 32], depth=1), 1, 4, [0.3], [0.3])
    path = tmp_path / "int8.pt"
    quantized = save_torch_int8(path, model, base_spec, tiny_data.train[0][:64], note="test")
    raw = torch.load(path, weights_only=True)  # the file holds no pickled code
    assert raw["spec"] == base_spec and raw["meta"]["note"] == "test"
    assert raw["meta"]["params"] == count_params(model)  # fp32 counts: int8 cannot be counted
    assert raw["meta"]["macs"] == count_macs(model, (1, 8, 8))
    reloaded = open_model(path)
    assert (reloaded.runtime, reloaded.precision) == (Runtime.TORCH_INT8, "int8")
    assert (reloaded.params, reloaded.macs) == (count_params(model), count_macs(model, (1, 8, 8)))
    x = tiny_data.test[0]
    before, after = predict(quantized, x, device=CPU), reloaded.predict(x)
    assert torch.equal(before, after)
    assert logit_parity(predict(model, x), after)["agreement"] >= 0.9
    assert any(p.dtype == torch.qint8 for p in reloaded.module.state_dict().values()
               if isinstance(p, torch.Tensor))


@pytest.mark.slow  # torchvision models: 9-12 s each here
@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v2"])
def test_torch_int8_round_trip_torchvision_archs(tmp_path, arch):
    # resnet18 is the arch PT2E fails on; FX (and the rebuild-then-load storage) must handle it
    spec = make_spec(ModelSpec(arch=arch, width_mult=0.25), 3, 5, [0.5] * 3, [0.25] * 3)
    torch.manual_seed(0)
    model = build_model(spec).eval()
    x = torch.randint(0, 256, (8, 3, 8, 8), dtype=torch.uint8)
    quantized = save_torch_int8(tmp_path / "q.pt", model, spec, x)
    reloaded = open_model(tmp_path / "q.pt", (3, 8, 8), 5)
    assert torch.equal(predict(quantized, x, device=CPU), reloaded.predict(x))


def test_torch_int8_file_bytes_are_reproducible(tmp_path, tiny_data, model_and_spec):
    cal = tiny_data.train[0][:32]
    for name in ("a.pt", "b.pt"):
        save_torch_int8(tmp_path / name, *model_and_spec, cal)
    assert (tmp_path / "a.pt").read_bytes() == (tmp_path / "b.pt").read_bytes()


def test_quantize_torch_fx_leaves_fp32_model_untouched(tiny_data, model_and_spec):
    model, _ = model_and_spec
    before = {k: v.clone() for k, v in model.state_dict().items()}
    quantize_torch_fx(model, tiny_data.train[0][:32])
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_torch_int8_of_another_recipe_is_refused(tmp_path, tiny_data, model_and_spec):
    path = tmp_path / "q.pt"
    save_torch_int8(path, *model_and_spec, tiny_data.train[0][:16])
    payload = torch.load(path, weights_only=True)
    payload["meta"]["quantized"] = "pt2e-x86/1"
    torch.save(payload, path)
    with pytest.raises(ShrinkflowError, match=r"q\.pt: int8 recipe 'pt2e-x86/1'"):
        open_model(path)


def test_select_calibration_is_seeded_and_checked(tiny_data):
    x = tiny_data.train[0]
    a, b = select_calibration(x, 32, seed=0), select_calibration(x, 32, seed=0)
    assert torch.equal(a, b) and len(a) == 32
    assert not torch.equal(a, select_calibration(x, 32, seed=1))
    rows = {tuple(r.flatten().tolist()) for r in x}
    assert all(tuple(r.flatten().tolist()) in rows for r in a)
    with pytest.raises(ShrinkflowError, match=r"quantize\.calibration_samples = 999.*\(256\)"):
        select_calibration(x, 999, seed=0)


def test_parity_metrics_on_hand_made_logits():
    labels = torch.tensor([0, 1, 2, 3])
    fp32 = torch.eye(4) * 5  # predicts 0, 1, 2, 3: all right
    onnx_fp32 = fp32.clone()
    onnx_fp32[2, 2] += 0.001
    onnx_int8 = fp32.clone()
    onnx_int8[3] = torch.tensor([6.0, 0, 0, 5])  # predicts 0, 1, 2, 0
    torch_int8 = torch.tensor([[1.0, 0, 0, 0], [0, 1, 0, 0], [0, 1, 0, 0], [0, 1, 0, 0]])
    m = parity_metrics(fp32, onnx_fp32, onnx_int8, torch_int8, labels)
    assert m["onnx_max_abs_diff"] == pytest.approx(0.001, abs=1e-6)
    assert m["onnx_agreement"] == 1.0 and m["fp32_test_acc"] == 1.0
    assert m["int8_test_acc"] == 0.75 and m["acc_drop_points"] == 25.0
    assert m["int8_agreement"] == 0.75
    assert m["torch_int8_test_acc"] == 0.5 and m["torch_int8_agreement"] == 0.5


# --- quantization-aware training ---------------------------------------------------------------


# One QAT fine-tune end to end (qat_finetune, quantize_qat_onnx, their parity) runs in
# tests/stages/test_quantize.py, through the stage: torchao's prepare exports 42 patterns each
# time (7 CPU-s), so the suite runs it once.


class _ReusedReLU(torch.nn.Module):
    """The pattern of torchvision's BasicBlock: one ReLU module called twice."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.Conv2d(4, 4, 3)
        self.relu = torch.nn.ReLU()
        self.head = torch.nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.conv2(self.relu(self.conv1(x))))
        return self.head(x.mean((2, 3)))


@pytest.mark.slow  # importing torchao's PT2E quantizer: 4.3 CPU-s here; QAT is not the default
def test_qat_prepares_a_module_called_twice():
    # without pt2e_export's split, the X86 quantizer raises "Input partition has more than one
    # output node" here (measured on resnet18, whose blocks do this)
    # imported here, not at the top: it costs more than torch itself (-X importtime), and every
    # xdist worker would pay it while collecting, also under -m "not slow"
    from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e

    torch.manual_seed(0)
    graph = pt2e_export(_ReusedReLU().train(), (1, 8, 8))
    prepared = prepare_qat_pt2e(graph, x86_quantizer(is_qat=True, reduce_range=True))
    fake_quants = [m for m in prepared.modules() if hasattr(m, "quant_max")]
    assert any(m.quant_max == 255 for m in fake_quants)  # activations, uint8
    assert any(m.quant_max == 64 for m in fake_quants)  # weights on ORT's reduce_range grid
    assert prepared(torch.rand(5, 1, 8, 8)).shape == (5, 3)  # the batch dimension is dynamic


# --- the stage script ------------------------------------------------------------------------


def test_int8_forms_of_a_downsampled_model_follow_its_fp32_logits(tmp_path):
    """Both int8 files of a student that downsamples (16x16 -> 8x8 inside the model) take the
    full-size images and keep the resize: their logits follow the fp32 model's, which are far
    from what the network gives on the full-size images without the resize."""
    data = make_prepared(size=FULL[1])
    model, spec = train_cnn(data, [8, 16], input_size=8)
    calibration, x = data.train[0][:64], data.test[0]
    ref = predict(model, x)
    with torch.no_grad():  # the same weights on the full-size images, resize skipped
        skipped = model.body((x.float() / 255 - model.mean) / model.std)
    gap = (skipped - ref).abs().max()
    export_onnx(model, FULL, tmp_path / "s.onnx")
    quantize_onnx_static(tmp_path / "s.onnx", tmp_path / "q.onnx", calibration,
                         per_channel=True, reduce_range=True)
    save_torch_int8(tmp_path / "q.pt", model, spec, calibration, role="quantized_torch")
    for name in ("q.onnx", "q.pt"):
        int8 = open_model(tmp_path / name, FULL, 4).predict(x)
        assert logit_parity(ref, int8)["agreement"] >= 0.9, name
        assert (int8 - ref).abs().max() < 0.2 * gap, name
