"""Benchmark mechanics on a tiny model: statistics, rows, flat keys and ratios (never speed)."""

from __future__ import annotations

import pytest
import torch

from shrinkflow.artifacts import save_model
from shrinkflow.bench import (
    Job,
    PeakRss,
    flat_metrics,
    latency_stats,
    p50_drift,
    run_interleaved,
    run_job,
    split_calls,
    time_calls,
    worker_env,
)
from shrinkflow.errors import ShrinkflowError
from shrinkflow.models import build_model, count_macs, count_params

SHAPE = [1, 8, 8]


@pytest.fixture
def tiny_pt(tmp_path):
    spec = {"arch": "cnn", "widths": [4, 8], "depth": 1, "width_mult": 1.0, "in_channels": 1,
            "num_classes": 3, "mean": [0.5], "std": [0.25]}
    torch.manual_seed(0)
    model = build_model(spec)
    path = tmp_path / "tiny.pt"
    save_model(path, model, spec)
    return path, model


def test_latency_stats_ordered_and_throughput_consistent():
    times = [float(t) for t in range(1, 101)]  # 1..100 ms
    s = latency_stats(times, batch_size=10)
    assert 0 < s["p50_ms"] <= s["p90_ms"] <= s["p99_ms"] <= 100
    assert s["p50_ms"] == pytest.approx(50.5)
    # 100 calls x 10 images in 5.05 s
    assert s["ips"] == pytest.approx(1000 / 5.05, rel=1e-3)
    with pytest.raises(ValueError):
        latency_stats([], 1)


def test_time_calls_counts_warmup_and_syncs():
    calls, syncs = [], []
    times = time_calls(lambda: calls.append(1), warmup=3, repeats=5, sync=lambda: syncs.append(1))
    assert len(times) == 5 and len(calls) == 8
    assert len(syncs) == 6  # once after warm-up, once per timed call
    assert all(t >= 0 for t in times)


def test_peak_rss_sees_an_allocation():
    memory = PeakRss()
    memory.start()
    block = torch.ones(20_000_000)  # 80 MB, touched
    block += 1
    extra = memory.stop()
    del block
    assert extra > 50


def test_run_job_torch_rows_per_batch_size(tiny_pt):
    path, model = tiny_pt
    job = Job("tiny", str(path), "torch", SHAPE, [4, 1], repeats=5, warmup=1, threads=1)
    rows = run_job(job)
    assert [r["batch_size"] for r in rows] == [1, 4]
    for r in rows:
        assert 0 < r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"]
        assert r["ips"] > 0 and r["rss_mb"] >= 0
        assert r["params"] == count_params(model)
        assert r["macs"] == count_macs(model, tuple(SHAPE))
        assert r["file_bytes"] == path.stat().st_size
        assert (r["runtime"], r["precision"], r["threads"]) == ("torch", "fp32", 1)


def test_run_job_onnx_reads_counts_from_metadata(tiny_pt, tmp_path):
    from shrinkflow.quantize import export_onnx

    _, model = tiny_pt
    onnx_path = tmp_path / "tiny.onnx"
    export_onnx(model, tuple(SHAPE), onnx_path)
    job = Job("tiny_onnx", str(onnx_path), "onnxruntime", SHAPE, [2], repeats=3, warmup=1,
              threads=1, device="cuda")
    assert job.device == "cpu"  # ORT always runs on the CPU here
    (row,) = run_job(job)
    assert row["params"] == count_params(model) and row["macs"] == count_macs(model, (1, 8, 8))
    assert 0 < row["p50_ms"] <= row["p99_ms"]


def test_split_calls_spreads_repeats_over_rounds():
    assert split_calls(10, 3) == [4, 3, 3]
    assert split_calls(2, 5) == [1, 1]  # never an empty round
    assert split_calls(7, 1) == [7]
    assert sum(split_calls(200, 50)) == 200


def test_run_interleaved_times_every_model_in_its_own_worker(tiny_pt, tmp_path):
    from shrinkflow.quantize import export_onnx

    path, model = tiny_pt
    onnx_path = tmp_path / "tiny.onnx"
    export_onnx(model, tuple(SHAPE), onnx_path)
    jobs = [Job("a", str(path), "torch", SHAPE, [1, 2], repeats=7, warmup=1, threads=1),
            Job("b", str(onnx_path), "onnxruntime", SHAPE, [2], repeats=5, warmup=0, threads=1)]
    rounds = []
    rows = run_interleaved(jobs, 3, on_round=lambda done, total: rounds.append((done, total)))
    assert rounds == [(1, 3), (2, 3), (3, 3)]
    assert [(r["model"], r["batch_size"], r["calls"]) for r in rows] == [
        ("a", 1, 7), ("a", 2, 7), ("b", 2, 5)]
    for r in rows:
        assert 0 < r["min_ms"] <= r["p50_ms"] <= r["p99_ms"] and r["rss_mb"] >= 0
        assert r["params"] == count_params(model) and r["threads"] == 1


def test_run_interleaved_names_the_model_whose_worker_failed(tiny_pt, tmp_path):
    path, _ = tiny_pt
    jobs = [Job("good", str(path), "torch", SHAPE, [1], repeats=2, warmup=0),
            Job("broken", str(tmp_path / "missing.pt"), "torch", SHAPE, [1], repeats=2)]
    with pytest.raises(ShrinkflowError, match=r"broken .*missing\.pt"):
        run_interleaved(jobs, 2)


def test_worker_env_keeps_user_glibc_tunables(monkeypatch):
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.check=0")
    tunables = worker_env()["GLIBC_TUNABLES"].split(":")
    assert "glibc.malloc.check=0" in tunables
    assert any(t.startswith("glibc.malloc.trim_threshold=") for t in tunables)


def test_unknown_runtime_rejected():
    with pytest.raises(ValueError, match="runtime"):
        Job("x", "x.pt", "tensorrt", SHAPE, [1])


def _row(model, b, p50, size, params=None):
    return {"model": model, "batch_size": b, "p50_ms": p50, "p90_ms": p50, "p99_ms": p50,
            "ips": b * 1000 / p50, "rss_mb": 1.0, "file_bytes": size, "params": params,
            "macs": None}


def test_flat_metrics_keys_and_ratios():
    rows = [
        _row("teacher", 64, 40.0, 4000, params=100),
        _row("student", 64, 10.0, 1000),
        _row("pruned", 64, 5.0, 500),
        _row("pruned_onnx", 64, 2.0, 500),
        _row("quantized", 64, 1.0, 125),
        _row("teacher", 1, 4.0, 4000, params=100),
    ]
    m = flat_metrics(rows)
    assert m["bench_teacher_b64_p50_ms"] == 40.0 and m["bench_teacher_params"] == 100
    assert "bench_student_macs" not in m  # unknown counts are left out, not zero
    assert m["bench_pruned_b64_speedup_vs_teacher"] == 8.0
    assert m["bench_pruned_b64_speedup_vs_student"] == 2.0
    assert m["bench_quantized_b64_speedup_vs_pruned_onnx"] == 2.0
    assert m["bench_pruned_onnx_b64_speedup_vs_pruned"] == 2.5
    assert m["bench_quantized_size_ratio_vs_teacher"] == pytest.approx(125 / 4000)
    assert "bench_teacher_b64_speedup_vs_teacher" not in m
    assert "bench_pruned_b1_speedup_vs_teacher" not in m  # pruned b1 was not measured
    assert "bench_quantized_torch_b64_speedup_vs_pruned" not in m
    assert all(isinstance(v, (int, float)) for v in m.values())


def test_run_job_torch_int8_reports_fp32_counts(tiny_pt, tmp_path):
    from shrinkflow.quantize import save_torch_int8

    _, model = tiny_pt
    spec = {"arch": "cnn", "widths": [4, 8], "depth": 1, "width_mult": 1.0, "in_channels": 1,
            "num_classes": 3, "mean": [0.5], "std": [0.25]}
    calib = torch.randint(0, 256, (16, *SHAPE), dtype=torch.uint8)
    path = tmp_path / "int8.pt"
    save_torch_int8(path, model, spec, calib)
    (row,) = run_job(Job("q", str(path), "torch_int8", SHAPE, [2], repeats=3, warmup=1))
    assert row["precision"] == "int8" and row["device"] == "cpu"
    assert row["params"] == count_params(model) and row["macs"] == count_macs(model, (1, 8, 8))
    assert 0 < row["p50_ms"] <= row["p99_ms"]


def test_p50_drift_percent_per_model_and_batch():
    first = [_row("a", 1, 2.0, 1), _row("a", 64, 10.0, 1), _row("gone", 1, 1.0, 1)]
    second = [_row("a", 1, 2.2, 1), _row("a", 64, 8.0, 1), _row("new", 1, 1.0, 1)]
    drift = {(d["model"], d["batch_size"]): d["drift_pct"] for d in p50_drift(first, second)}
    assert drift == {("a", 1): pytest.approx(10.0), ("a", 64): pytest.approx(-20.0)}


def test_p50_drift_of_speedups_cancels_a_uniformly_slower_machine():
    first = [_row("teacher", 64, 20.0, 1), _row("a", 64, 5.0, 1), _row("b", 64, 2.0, 1)]
    # second run: the whole machine 30% slower, and model b alone a further 10% slower
    second = [_row("teacher", 64, 26.0, 1), _row("a", 64, 6.5, 1), _row("b", 64, 2.86, 1)]
    drift = {d["model"]: d for d in p50_drift(first, second)}
    assert drift["a"]["drift_pct"] == pytest.approx(30.0)
    assert drift["a"]["speedup_1"] == 4.0 and drift["a"]["speedup_drift_pct"] == pytest.approx(0)
    assert drift["b"]["speedup_drift_pct"] == pytest.approx((1 / 1.1 - 1) * 100, abs=0.01)
    assert "speedup_drift_pct" not in drift["teacher"]
