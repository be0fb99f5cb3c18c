"""The metric-key scheme and the model list (shrinkflow.core.metric_keys)."""

from __future__ import annotations

import pytest
import yaml

from shrinkflow.core.errors import ShrinkflowError
from shrinkflow.core.metric_keys import (
    FINAL_FIELDS,
    final_key,
    model_key,
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


def test_metric_keys_build():
    assert model_key("pruned", "acc") == "pruned_acc"
    assert final_key("speedup_low") == "final_speedup_low"
    assert len({final_key(f) for f in FINAL_FIELDS}) == len(FINAL_FIELDS)
    with pytest.raises(ValueError, match="p50_ms"):
        final_key("p50_ms")  # latencies are not DVC metrics: metrics/benchmark.csv has them
