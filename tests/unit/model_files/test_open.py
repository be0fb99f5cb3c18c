"""One way to open a model (shrinkflow.model_files.open): every file kind through open_model, its
native input and counts, and bad or mismatched files in one line naming the file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from shrinkflow.compress.quantize import quantize_onnx_static, save_torch_int8
from shrinkflow.core.errors import ShrinkflowError
from shrinkflow.model_files.export_onnx import export_onnx
from shrinkflow.model_files.open import Runtime, open_model, ort_session
from shrinkflow.model_files.pt import save_model
from shrinkflow.nets.zoo import build_model, count_macs, count_params, make_spec
from shrinkflow.params.common import ModelSpec

ROOT = Path(__file__).resolve().parents[3]
SHAPE = (1, 8, 8)


def spec_of(widths: list[int], classes: int = 4, channels: int = 1) -> dict:
    return make_spec(ModelSpec(widths=widths, depth=1), channels, classes, [0.3] * channels,
                     [0.3] * channels)


@pytest.fixture
def fp32(tmp_path):
    """A small fp32 CNN saved as the pipeline saves it; (path, model, spec)."""
    spec = spec_of([8, 16])
    torch.manual_seed(0)
    model = build_model(spec).eval()
    path = tmp_path / "m.pt"
    save_model(path, model, spec, role="student")
    return path, model, spec


# --- opening each kind of file -------------------------------------------------------------------


def test_fp32_pt_runs_like_the_module_on_uint8_and_float_input(fp32, tiny_data):
    path, model, _ = fp32
    opened = open_model(path, SHAPE, 4)
    x = tiny_data.test[0]
    with torch.no_grad():
        expected = model(x.float() / 255)
    assert torch.equal(opened.predict(x), expected)
    assert torch.equal(opened.predict(x.float() / 255), expected)  # [0, 1] floats: no rescale
    # in batches of 7 (a short last one): same logits up to kernel choice per batch size
    assert torch.allclose(opened.predict(x, batch_size=7), expected, atol=1e-6)
    assert (opened.runtime, opened.precision, opened.device.type) == (Runtime.TORCH, "fp32", "cpu")
    assert (opened.params, opened.macs) == (count_params(model), count_macs(model, SHAPE))
    assert opened.file_bytes == path.stat().st_size and opened.num_classes == 4
    assert opened.meta["role"] == "student"
    assert open_model(path).macs is None  # H x W unknown: not guessed


def test_onnx_and_int8_files_report_the_fp32_models_counts(fp32, tiny_data, tmp_path):
    _, model, spec = fp32
    cal = tiny_data.train[0][:64]
    export_onnx(model, SHAPE, tmp_path / "m.onnx")
    quantize_onnx_static(tmp_path / "m.onnx", tmp_path / "q.onnx", cal)
    save_torch_int8(tmp_path / "q.pt", model, spec, cal)
    counts = (count_params(model), count_macs(model, SHAPE))
    kinds = {}
    for name in ("m.onnx", "q.onnx", "q.pt"):
        opened = open_model(tmp_path / name, SHAPE, 4)
        kinds[name] = (opened.runtime.value, opened.precision)
        assert (opened.params, opened.macs) == counts, name
        assert opened.input_shape == SHAPE and opened.num_classes == 4
        logits = opened.predict(tiny_data.test[0])
        assert logits.dtype == torch.float32 and logits.shape == (64, 4)
    assert kinds == {"m.onnx": ("onnxruntime", "fp32"), "q.onnx": ("onnxruntime", "int8"),
                     "q.pt": ("torch_int8", "int8")}


def test_prepare_gives_each_runtime_its_native_input(fp32, tmp_path):
    path, model, _ = fp32
    export_onnx(model, SHAPE, tmp_path / "m.onnx")
    x = torch.full((2, *SHAPE), 51, dtype=torch.uint8)
    native = open_model(tmp_path / "m.onnx").prepare(x)
    assert isinstance(native, np.ndarray) and native.dtype == np.float32
    assert np.all(native == np.float32(51) / np.float32(255))
    as_tensor = open_model(path).prepare(x)
    assert isinstance(as_tensor, torch.Tensor) and torch.equal(as_tensor, x.float() / 255)


# --- bad files: one line naming the file ---------------------------------------------------------


def one_line_error(path, *args) -> str:
    with pytest.raises(ShrinkflowError) as err:
        open_model(path, *args)
    message = str(err.value)
    assert "\n" not in message and str(path) in message, message
    return message


@pytest.mark.parametrize("content, expected", [
    (b"", "empty file"),
    (b"\x08\x07garbage, not a protobuf" * 40, "not a loadable ONNX model"),
])
def test_bad_onnx_is_one_line(tmp_path, content, expected):
    path = tmp_path / "bad.onnx"
    path.write_bytes(content)
    assert expected in one_line_error(path)


def test_truncated_files_are_one_line(fp32, tmp_path):
    path, model, _ = fp32
    export_onnx(model, SHAPE, tmp_path / "m.onnx")
    for name, source in (("cut.onnx", tmp_path / "m.onnx"), ("cut.pt", path)):
        (tmp_path / name).write_bytes(source.read_bytes()[:2000])
        one_line_error(tmp_path / name)
    assert "not found" in one_line_error(tmp_path / "missing.pt")
    (tmp_path / "model.h5").write_bytes(b"x")
    assert "expected .pt or .onnx" in one_line_error(tmp_path / "model.h5")


def test_pt_whose_spec_does_not_match_its_weights_names_the_first_tensor(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "teacher.pt"
    save_model(path, build_model(spec_of([8, 16])), spec_of([16, 32]), role="teacher")
    message = one_line_error(path)
    assert "'body.features.0.weight' has shape [8, 1, 3, 3] but the spec builds [16, 1, 3, 3]" \
        in message
    assert len(message) < 300  # not load_state_dict's multi-kilobyte report
    # another architecture altogether: the first missing tensor is named
    mobilenet = make_spec(ModelSpec(arch="mobilenet_v2", width_mult=0.25), 1, 4, [0.3], [0.3])
    save_model(path, build_model(spec_of([8, 16])), mobilenet)
    assert "tensor 'body.features.0.0.weight' is missing" in one_line_error(path)


def test_pruned_pt_may_hold_smaller_tensors_than_its_spec(tmp_path, tiny_data):
    torch.manual_seed(0)
    small = build_model(spec_of([8, 16])).eval()
    save_model(tmp_path / "p.pt", small, spec_of([16, 32]), role="pruned", pruned=True)
    opened = open_model(tmp_path / "p.pt", SHAPE, 4)
    with torch.no_grad():
        assert torch.equal(opened.predict(tiny_data.test[0]),
                           small(tiny_data.test[0].float() / 255))
    # but never larger than the spec, pruned or not
    save_model(tmp_path / "big.pt", build_model(spec_of([32, 64])), spec_of([16, 32]),
               pruned=True)
    assert "(or smaller: pruned)" in one_line_error(tmp_path / "big.pt")


def test_model_for_other_data_is_refused_before_use(fp32, tmp_path):
    path, model, _ = fp32
    assert "takes 1x?x? images" in one_line_error(path, (3, 8, 8), 4)
    assert "predicts 4 classes but the data has 10" in one_line_error(path, SHAPE, 10)
    export_onnx(model, SHAPE, tmp_path / "m.onnx")
    assert "takes 1x8x8 images" in one_line_error(tmp_path / "m.onnx", (1, 16, 16), 4)
    assert open_model(path, (1, 16, 16), 4).macs == count_macs(model, (1, 16, 16))


# --- the real stage scripts ----------------------------------------------------------------------


# --- the model list and the key scheme -----------------------------------------------------------


def test_ort_session_missing_file_is_clear(tmp_path):
    with pytest.raises(ShrinkflowError, match="nope.onnx"):
        ort_session(tmp_path / "nope.onnx")
