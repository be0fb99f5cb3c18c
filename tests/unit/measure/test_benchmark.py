"""The benchmark (shrinkflow.measure.benchmark) on a tiny model: statistics, interleaved workers,
flat keys and ratios (never speed)."""

from __future__ import annotations

import os

import pytest

from shrinkflow.core.errors import ShrinkflowError
from shrinkflow.measure import benchmark as bench
from shrinkflow.measure.benchmark import (
    add_ratios,
    latency_stats,
    p50_drift,
    reusable_rows,
    run_interleaved,
    split_calls,
    worker_env,
)
from shrinkflow.measure.benchmark_job import Job
from shrinkflow.model_files.export_onnx import export_onnx
from shrinkflow.nets.zoo import count_params

SHAPE = [1, 8, 8]


def test_latency_stats_ordered_and_throughput_consistent():
    times = [float(t) for t in range(1, 101)]  # 1..100 ms
    s = latency_stats(times, batch_size=10)
    # numpy's linear interpolation between order statistics: p = 1 + q * 99
    assert (s["p50_ms"], s["p90_ms"], s["p99_ms"]) == pytest.approx((50.5, 90.1, 99.01))
    assert (s["min_ms"], s["mean_ms"], s["calls"]) == (1.0, 50.5, 100)
    # 100 calls x 10 images in 5.05 s
    assert s["ips"] == pytest.approx(1000 / 5.05, rel=1e-3)
    with pytest.raises(ValueError):
        latency_stats([], 1)


def test_split_calls_spreads_repeats_over_rounds():
    assert split_calls(10, 3) == [4, 3, 3]
    assert split_calls(2, 5) == [1, 1]  # never an empty round
    assert split_calls(7, 1) == [7]
    assert sum(split_calls(200, 50)) == 200


def test_run_interleaved_times_every_model_in_its_own_worker(tiny_pt, tmp_path):
    path, model = tiny_pt
    onnx_path = tmp_path / "tiny.onnx"
    export_onnx(model, tuple(SHAPE), onnx_path)
    jobs = [Job("a", str(path), SHAPE, [1, 2], repeats=7, warmup=1, threads=1),
            Job("b", str(onnx_path), SHAPE, [2], repeats=5, warmup=0, threads=1)]
    rounds = []
    rows = run_interleaved(jobs, 3, on_round=lambda done, total: rounds.append((done, total)))
    assert rounds == [(1, 3), (2, 3), (3, 3)]
    assert [(r["model"], r["runtime"], r["batch_size"], r["calls"]) for r in rows] == [
        ("a", "torch", 1, 7), ("a", "torch", 2, 7), ("b", "onnxruntime", 2, 5)]
    for r in rows:
        assert r["params"] == count_params(model) and r["threads"] == 1
        assert r["file_bytes"] == {"a": path, "b": onnx_path}[r["model"]].stat().st_size


def test_run_interleaved_reports_a_bad_model_file_in_one_line(tiny_pt, tmp_path):
    path, _ = tiny_pt
    garbage = tmp_path / "broken.onnx"
    garbage.write_bytes(b"not a protobuf" * 50)
    jobs = [Job("good", str(path), SHAPE, [1], repeats=2, warmup=0),
            Job("broken", str(garbage), SHAPE, [1], repeats=2)]
    with pytest.raises(ShrinkflowError, match=r"broken\.onnx: not a loadable ONNX model") as err:
        run_interleaved(jobs, 2)
    assert "\n" not in str(err.value)


def _send_environment(conn):  # runs in a benchmark worker (forked from the server)
    conn.send(dict(os.environ))


def test_workers_get_the_malloc_tunables_and_this_process_keeps_its_environment():
    before = os.environ.get("GLIBC_TUNABLES")
    bench._start_forkserver()
    ours, theirs = bench._WORKER_CONTEXT.Pipe()
    worker = bench._WORKER_CONTEXT.Process(target=_send_environment, args=(theirs,))
    worker.start()
    seen = ours.recv()
    worker.join()
    assert bench.MALLOC_TUNABLES in seen["GLIBC_TUNABLES"]
    assert os.environ.get("GLIBC_TUNABLES") == before


def test_worker_env_keeps_user_glibc_tunables(monkeypatch):
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.check=0")
    tunables = worker_env()["GLIBC_TUNABLES"].split(":")
    assert "glibc.malloc.check=0" in tunables
    assert any(t.startswith("glibc.malloc.trim_threshold=") for t in tunables)


def _row(model, b, p50, size, params=None, runtime="torch"):
    return {"model": model, "batch_size": b, "p50_ms": p50, "p90_ms": p50, "p99_ms": p50,
            "ips": b * 1000 / p50, "rss_mb": 1.0, "file_bytes": size, "params": params,
            "macs": None, "runtime": runtime}


def test_same_runtime_speedup_has_an_interval_from_paired_rounds():
    # the machine slows down in the last rounds: both models slow together, so the per-round
    # ratio stays near 4 and the interval is narrow although each latency's is wide
    teacher = _row("teacher", 64, 40.0, 4000)
    student = _row("student", 64, 10.0, 1000)
    teacher["round_p50_ms"] = " ".join(str(v) for v in [40, 40, 41, 40, 39, 40, 60, 62, 61, 40])
    student["round_p50_ms"] = " ".join(str(v) for v in [10, 10, 10.2, 10, 9.8, 10, 15, 15.4,
                                                        15.3, 10])
    out = {r["model"]: r for r in add_ratios([teacher, student], {})}
    s = out["student"]
    assert s["speedup_vs_teacher_same_runtime"] == 4.0
    assert 3.9 < s["speedup_vs_teacher_same_runtime_low"] <= 4.0
    assert 4.0 <= s["speedup_vs_teacher_same_runtime_high"] < 4.1
    # timed in different runs (different round counts): no paired interval is invented
    student["round_p50_ms"] = "10 10 10"
    lone = {r["model"]: r for r in add_ratios([teacher, student], {})}["student"]
    assert lone["speedup_vs_teacher_same_runtime_low"] == lone[
        "speedup_vs_teacher_same_runtime_high"] == 4.0


def test_rows_of_unchanged_models_are_kept_and_teachers_always_retimed():
    settings = "b1,64 r100/10 w10 t2 cpu X"
    previous = [{**_row(m, b, 1.0, 1), "file_sha256": f"sha-{m}", "settings": settings}
                for m in ("teacher", "teacher_onnx", "student_scratch", "student")
                for b in (1, 64)]
    hashes = {"teacher": "sha-teacher", "teacher_onnx": "sha-teacher_onnx",
              "student_scratch": "sha-student_scratch", "student": "sha-NEW"}
    teachers = ("teacher", "teacher_onnx")
    kept = reusable_rows(previous, hashes, settings, teachers)
    assert set(kept) == {"student_scratch"} and len(kept["student_scratch"]) == 2
    # other settings, or a changed teacher: everything is re-timed
    assert reusable_rows(previous, hashes, settings.replace("t2", "t1"), teachers) == {}
    assert reusable_rows(previous, {**hashes, "teacher": "sha-other"}, settings, teachers) == {}
    assert reusable_rows([], hashes, settings, teachers) == {}


def test_add_ratios_against_teacher_and_baseline():
    rows = [
        _row("teacher", 64, 40.0, 4000),
        _row("teacher_onnx", 64, 10.0, 4000, runtime="onnxruntime"),
        _row("pruned_onnx", 64, 2.0, 500, runtime="onnxruntime"),
        _row("quantized", 64, 1.6, 125, runtime="onnxruntime"),
        _row("quantized_torch", 64, 2.5, 130, runtime="torch_int8"),  # baseline not measured
    ]
    out = {r["model"]: r for r in add_ratios(rows, {"quantized": "pruned_onnx",
                                                    "quantized_torch": "pruned"},
                                             ("teacher", "teacher_onnx"))}
    assert out["quantized"]["speedup_vs_teacher"] == 25.0
    assert out["quantized"]["speedup_vs_teacher_same_runtime"] == 6.25
    assert out["quantized_torch"]["speedup_vs_teacher_same_runtime"] == 16.0
    assert (out["quantized"]["baseline"], out["quantized"]["speedup_vs_baseline"]) == (
        "pruned_onnx", 1.25)
    assert out["quantized"]["size_ratio_vs_teacher"] == pytest.approx(125 / 4000)
    assert out["quantized_torch"]["speedup_vs_baseline"] is None
    assert out["teacher"]["speedup_vs_teacher"] == 1.0 and out["teacher"]["baseline"] is None
    assert out["pruned_onnx"]["p50_ms"] == 2.0  # the row's own figures are kept


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
