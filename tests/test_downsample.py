"""Input downsampling (``distill.input_size``): the antialiased resize inside the student model.

The model, its saved file, its pruned and quantized forms and its ONNX export all take the
data's full-size images; only the network behind the resize sees the smaller ones.
"""

from __future__ import annotations

import onnx
import pytest
import torch
import torch.nn.functional as F

from shrinkflow.compress.prune import run_pruning
from shrinkflow.compress.quantize import quantize_onnx_static, save_torch_int8
from shrinkflow.core.errors import ShrinkflowError
from shrinkflow.model_files.export_onnx import export_onnx
from shrinkflow.model_files.open import open_model
from shrinkflow.model_files.pt import load_model, save_model
from shrinkflow.nets.zoo import Resize, build_model, count_macs, make_spec
from shrinkflow.params.common import ModelSpec
from shrinkflow.params.prune import PruneParams
from shrinkflow.training.loop import check_input_size, effective_input_size

SHAPE = (1, 16, 16)


def spec(input_size: int = 0, widths=(8, 16)) -> dict:
    return make_spec(ModelSpec(widths=list(widths), depth=1), SHAPE[0], 4, [0.3], [0.3],
                     input_size, list(SHAPE[1:]))


@pytest.mark.parametrize("size", [8, 11, 5])
def test_resize_equals_antialiased_bilinear_interpolate(size):
    x = torch.rand(3, 2, 16, 12)
    expected = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True,
                             align_corners=False)
    got = Resize([16, 12], size)(x)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    # antialiasing differs from a plain bilinear resize when shrinking (the check can fail)
    plain = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    assert (got - plain).abs().max() > 1e-3


def test_spec_without_input_size_builds_no_resize():
    assert "input_size" not in spec(0) and "input_size" not in spec(16)  # 16 = the data's size
    assert isinstance(build_model(spec(0)).resize, torch.nn.Identity)
    assert spec(8)["input_size"] == 8 and spec(8)["image_hw"] == [16, 16]


def test_downsampled_student_takes_full_size_images_and_costs_fewer_macs():
    full, small = build_model(spec(0)), build_model(spec(8))
    out = small.eval()(torch.rand(2, *SHAPE))
    assert out.shape == (2, 4)
    # MACs fall with the square of the side (counted through the resize on full-size input)
    ratio = count_macs(small, SHAPE) / count_macs(full, SHAPE)
    assert 0.2 < ratio < 0.3
    # the resize adds no weights: same state_dict keys, so pruning / loading need no special case
    assert small.state_dict().keys() == full.state_dict().keys()
    assert effective_input_size(spec(8), list(SHAPE)) == "8x8"
    assert effective_input_size(spec(0), list(SHAPE)) == "16x16"


def test_input_size_larger_than_the_data_is_one_line():
    check_input_size(16, list(SHAPE), "distill.input_size")  # equal is fine
    with pytest.raises(ShrinkflowError, match=r"^distill.input_size = 20: larger than the "
                                              r"data's images \(16x16\)"):
        check_input_size(20, list(SHAPE), "distill.input_size")


def test_save_load_prune_round_trip(tmp_path):
    torch.manual_seed(0)
    model = build_model(spec(8)).eval()
    x = torch.rand(5, *SHAPE)
    save_model(tmp_path / "s.pt", model, spec(8), role="student")
    reloaded, _ = load_model(tmp_path / "s.pt", role="student")
    torch.testing.assert_close(reloaded(x), model(x), atol=0, rtol=0)
    before = count_macs(reloaded, SHAPE)
    run_pruning(reloaded, SHAPE, PruneParams(sensitivity=False, round_to=1, ratio=0.5,
                                             iterative_steps=1), log=lambda _: None)
    assert count_macs(reloaded, SHAPE) < 0.6 * before
    assert reloaded(x).shape == (5, 4)


def test_onnx_export_keeps_the_resize_and_full_size_input(tmp_path):
    """Feed full-size images to the exported ONNX: logits match the PyTorch model's."""
    torch.manual_seed(0)
    model = build_model(spec(8)).eval()
    path = tmp_path / "s.onnx"
    export_onnx(model, SHAPE, path)
    graph = onnx.load(str(path)).graph
    dims = [d.dim_value for d in graph.input[0].type.tensor_type.shape.dim[1:]]
    assert dims == list(SHAPE)  # the deployed model takes the original image size
    assert sum(n.op_type == "MatMul" for n in graph.node) == 2  # the resize is in the graph
    x = torch.rand(7, *SHAPE)
    exported = open_model(path, SHAPE, 4)
    torch.testing.assert_close(exported.predict(x), model(x).detach(), atol=1e-4, rtol=0)
    assert exported.macs == count_macs(model, SHAPE)


def test_int8_forms_of_a_downsampled_model_run(tmp_path):
    torch.manual_seed(0)
    model = build_model(spec(8)).eval()
    calibration = torch.rand(32, *SHAPE)
    fp32 = tmp_path / "s.onnx"
    export_onnx(model, SHAPE, fp32)
    quantize_onnx_static(fp32, tmp_path / "q.onnx", calibration)
    x = torch.rand(6, *SHAPE)
    assert open_model(tmp_path / "q.onnx", SHAPE, 4).predict(x).shape == (6, 4)
    save_torch_int8(tmp_path / "q.pt", model, spec(8), calibration, role="quantized_torch")
    assert open_model(tmp_path / "q.pt", SHAPE, 4).predict(x).shape == (6, 4)
