"""One way to open a model: every file kind through runtime.open_model, bad files in one line,
roles, the model list (models.yaml) shared with dvc.yaml, and the metric-key scheme."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from prepared_files import write_prepared_dir

from shrinkflow.compress.quantize import quantize_onnx_static, save_torch_int8
from shrinkflow.core.errors import ShrinkflowError
from shrinkflow.core.metric_keys import (
    bench_batch_sizes,
    bench_key,
    model_key,
    parse_bench_key,
    read_model_list,
)
from shrinkflow.model_files.export_onnx import export_onnx
from shrinkflow.model_files.open import Runtime, open_model
from shrinkflow.model_files.pt import load_model, save_model
from shrinkflow.nets.zoo import build_model, count_macs, count_params, make_spec
from shrinkflow.params.common import ModelSpec

ROOT = Path(__file__).resolve().parents[1]
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


def test_roles_keep_a_student_from_passing_as_the_teacher(fp32, tmp_path):
    path, model, spec = fp32  # saved with role="student"
    with pytest.raises(ShrinkflowError, match=r"m\.pt: expected the 'teacher' model .* holds "
                                              r"the 'student' model"):
        load_model(path, role="teacher")
    save_model(tmp_path / "old.pt", model, spec)  # saved before roles existed
    with pytest.raises(ShrinkflowError, match="no role recorded"):
        load_model(tmp_path / "old.pt", role="teacher")
    reloaded, payload = load_model(path, role="student")
    assert payload["meta"]["role"] == "student" and count_params(reloaded) == count_params(model)


# --- the real stage scripts ----------------------------------------------------------------------


@pytest.fixture
def workspace(tmp_path, tiny_data):
    """A pipeline folder: prepared data, the shipped params.yaml and a previous eval result."""
    write_prepared_dir(tmp_path / "data" / "prepared", tiny_data)
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    (tmp_path / "models").mkdir()
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "eval_quantized.json").write_text('{"quantized_acc": 0.9}\n')
    return tmp_path


def run_stage(workspace: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "stages" / args[0]), *args[1:]],
                          cwd=workspace, capture_output=True, text=True, timeout=180,
                          env=dict(os.environ))


def test_evaluate_stage_garbage_onnx_is_one_line_and_keeps_old_metrics(workspace):
    (workspace / "models" / "quantized.onnx").write_bytes(b"\x00garbage" * 100)
    before = (workspace / "metrics" / "eval_quantized.json").read_bytes()
    proc = run_stage(workspace, "evaluate.py", "quantized", "models/quantized.onnx")
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "models/quantized.onnx" in lines[0], proc.stderr
    assert (workspace / "metrics" / "eval_quantized.json").read_bytes() == before


def test_evaluate_stage_mismatched_pt_is_one_line(workspace):
    torch.manual_seed(0)
    save_model(workspace / "models" / "student.pt", build_model(spec_of([4, 8])),
               spec_of([8, 16]), role="student")
    proc = run_stage(workspace, "evaluate.py", "student", "models/student.pt")
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "models/student.pt" in lines[0], proc.stderr
    assert "'body.features.0.weight'" in lines[0]
    assert not (workspace / "metrics" / "eval_student.json").exists()


def test_distill_stage_refuses_a_student_copied_over_the_teacher(workspace):
    torch.manual_seed(0)
    save_model(workspace / "models" / "teacher.pt", build_model(spec_of([4, 8])),
               spec_of([4, 8]), role="student")
    (workspace / "metrics" / "student_scratch.json").write_text(
        '{"student_scratch_test_acc": 0.5}\n')
    proc = run_stage(workspace, "distill.py")
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "models/teacher.pt: expected the 'teacher' model" in lines[0]
    assert not (workspace / "models" / "student.pt").exists()


# --- the model list and the key scheme -----------------------------------------------------------


def test_models_yaml_drives_dvc_yaml():
    models = read_model_list(ROOT / "models.yaml")
    dvc = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    assert "models.yaml" in dvc["vars"]
    evaluate = dvc["stages"]["evaluate"]
    assert evaluate["foreach"] == "${models}"
    assert "${item.file}" in evaluate["do"]["cmd"] and "${item.file}" in evaluate["do"]["deps"]
    bench_deps = dvc["stages"]["benchmark"]["deps"]
    assert "models.yaml" in bench_deps and "models.yaml" in dvc["stages"]["report"]["deps"]
    for m in models:
        assert m.file in bench_deps, f"dvc.yaml: benchmark must depend on {m.file} ({m.name})"
        stage, _, item = m.stage.partition("@")  # export_onnx@teacher: a foreach item
        definition = dvc["stages"][stage]
        if item:
            assert item in definition["foreach"], f"dvc.yaml: {stage} has no item {item}"
            definition = definition["do"]
        outs = [(next(iter(o)) if isinstance(o, dict) else o).replace("${item}", item)
                for o in definition["outs"]]
        assert m.file in outs, f"models.yaml: {m.name} says stage {m.stage} writes {m.file}"
    model_files = {d for d in bench_deps if d.startswith("models/")}
    assert model_files == {m.file for m in models}, "benchmark deps list a model not in the list"


def test_read_model_list_orders_and_checks(tmp_path):
    path = tmp_path / "models.yaml"
    path.write_text(yaml.safe_dump({
        "models": {"teacher": {"file": "t.pt", "stage": "a"}, "pruned": {"file": "p.pt",
                                                                           "stage": "b"},
                   "quantized": {"file": "q.onnx", "stage": "c", "baseline": "pruned_onnx"}},
        "benchmark_only": {"pruned_onnx": {"file": "p.onnx", "stage": "c",
                                           "accuracy_of": "pruned"}},
    }, sort_keys=False))
    models = read_model_list(path)
    assert [m.name for m in models] == ["teacher", "pruned", "pruned_onnx", "quantized"]
    assert [m.evaluated for m in models] == [True, True, False, True]
    assert models[2].accuracy_of == "pruned" and models[3].baseline == "pruned_onnx"
    path.write_text("models:\n  teacher: {file: t.pt, stage: a}\nbenchmark_only:\n"
                    "  x: {file: x.onnx, stage: a}\n")
    with pytest.raises(ShrinkflowError, match=r"benchmark_only\.x: needs accuracy_of"):
        read_model_list(path)
    path.write_text("models:\n  student: {file: s.pt, stage: a, runtime: torch}\n")
    with pytest.raises(ShrinkflowError, match=r"models\.student: unknown key\(s\) \['runtime'\]"):
        read_model_list(path)


def test_metric_keys_build_and_parse():
    assert model_key("pruned", "acc") == "pruned_acc"
    key = bench_key("student_b2", 64, "p50_ms")
    assert key == "bench_student_b2_b64_p50_ms"
    assert parse_bench_key(key) == ("student_b2", 64, "p50_ms")
    assert parse_bench_key("bench_quantized_b1_speedup_vs_teacher") == (
        "quantized", 1, "speedup_vs_teacher")
    for other in ("bench_quantized_b1_p90_ms", "bench_threads", "quantized_acc",
                  "bench_quantized_p50_ms"):
        assert parse_bench_key(other) is None, other
    with pytest.raises(ValueError, match="p99_ms"):
        bench_key("a", 1, "p99_ms")
    keys = ["bench_a_b64_p50_ms", "bench_a_b1_p50_ms", "bench_b_b8_p50_ms",
            "bench_a_b256_speedup_vs_teacher"]
    assert bench_batch_sizes(keys) == [1, 8, 64] and bench_batch_sizes(keys, "a") == [1, 64]
