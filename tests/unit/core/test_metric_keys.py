"""The metric-key scheme and the model list (shrinkflow.core.metric_keys)."""

from __future__ import annotations

import pytest
import yaml

from shrinkflow.core.errors import ShrinkflowError
from shrinkflow.core.metric_keys import (
    bench_batch_sizes,
    bench_key,
    model_key,
    parse_bench_key,
    read_model_list,
)


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
