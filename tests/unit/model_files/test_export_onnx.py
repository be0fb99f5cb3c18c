"""ONNX export (shrinkflow.model_files.export_onnx): the file runs like the PyTorch model in ONNX
Runtime, on any batch size, and carries the model's counts."""

from __future__ import annotations

import onnx
import torch
from tiny_models import FULL, downsampled_spec

from shrinkflow.measure.metrics import logit_parity
from shrinkflow.model_files.export_onnx import export_onnx
from shrinkflow.model_files.open import Runtime, open_model, ort_session
from shrinkflow.nets.zoo import build_model, count_macs, count_params, make_spec
from shrinkflow.params.common import ModelSpec
from shrinkflow.training.loop import predict


def test_export_onnx_matches_torch_and_carries_metadata(tiny_data, tmp_path):
    torch.manual_seed(0)
    model = build_model(make_spec(ModelSpec(widths=[8, 16], depth=1), 1, 4, [0.3], [0.3])).eval()
    fp32_onnx = tmp_path / "m.onnx"
    export_onnx(model, (1, 8, 8), fp32_onnx)
    x = tiny_data.test[0]
    ref = predict(model, x)
    onnx = open_model(fp32_onnx)
    for batch_size in (7, 64):  # dynamic batch axis: odd sizes and a short last batch
        out = onnx.predict(x, batch_size=batch_size)
        diff = logit_parity(ref, out)
        assert diff["max_abs_diff"] < 1e-4
        assert diff["agreement"] == 1.0
    assert (onnx.params, onnx.macs, onnx.num_classes) == (
        count_params(model), count_macs(model, (1, 8, 8)), 4)
    assert (onnx.runtime, onnx.precision) == (Runtime.ONNXRUNTIME, "fp32")
    session = ort_session(fp32_onnx, threads=1)
    assert [i.name for i in session.get_inputs()] == ["input"]
    assert [o.name for o in session.get_outputs()] == ["logits"]


def test_onnx_export_keeps_the_resize_and_full_size_input(tmp_path):
    """Feed full-size images to the exported ONNX: logits match the PyTorch model's."""
    torch.manual_seed(0)
    model = build_model(downsampled_spec(8)).eval()
    path = tmp_path / "s.onnx"
    export_onnx(model, FULL, path)
    graph = onnx.load(str(path)).graph
    dims = [d.dim_value for d in graph.input[0].type.tensor_type.shape.dim[1:]]
    assert dims == list(FULL)  # the deployed model takes the original image size
    assert sum(n.op_type == "MatMul" for n in graph.node) == 2  # the resize is in the graph
    x = torch.rand(7, *FULL)
    exported = open_model(path, FULL, 4)
    torch.testing.assert_close(exported.predict(x), model(x).detach(), atol=1e-4, rtol=0)
    assert exported.macs == count_macs(model, FULL)
