"""Latency, throughput and memory of every model: one worker process per model, timed in rounds.

Why a process per model: peak RSS and allocator/thread-pool state are per process, so a model
measured after another one in the same process would inherit its heap and warm caches.

Why rounds: on a shared machine (a VM on a busy host) the speed of a core drifts over tens of
seconds, by up to 50%. Timing one model after another lets a slow minute land on one model only,
so its median, and every speed-up against it, measures the host. Instead every worker is started
and warmed up first, then the parent asks them in turn for a few timed calls, round after round,
in a new seeded random order each round; each model's ``repeats`` calls are spread over the whole
benchmark, so a slow period is shared by all models and each median covers the same stretch of
time.

Workers are forked from a server process that has already imported PyTorch and ONNX Runtime
(see ``Worker``); what runs inside one (loading, warm-up, memory, the timed calls) is
``shrinkflow.measure.benchmark_worker``. This module, the parent's side, imports neither: the stage
starts
without them. Timing is ``time.perf_counter`` around single calls under
``torch.inference_mode`` (``torch.cuda.synchronize`` around each call on CUDA). Every round
starts a model's turn with one untimed call, since the previous worker has just evicted its
weights from the CPU caches.

Results: one row per model and batch size (``metrics/benchmark.csv``: every statistic with its
95 % interval over the rounds, memory, size, counts, ratios and the software versions). They are
not DVC metrics: 9 models x 2 batch sizes of timings that move on every run made ``dvc exp show``
unreadable; select_final puts the final model's figures into metrics/final.json.

Re-timing only what changed (``reusable_rows``): a row records its model file's SHA-256 and the
settings it was timed with. The next run keeps the rows of models whose file and settings are
unchanged and times the others in one interleaved run together with the teacher and its exports,
which are always re-timed, so every speed-up it writes is against the teacher of the same run; a
kept row keeps the speed-ups of the run it was timed in (its ``timed_at`` says when). A changed
teacher file re-times everything.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Callable
from dataclasses import asdict
from multiprocessing import forkserver
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from shrinkflow.core.errors import ShrinkflowError
from shrinkflow.core.metric_keys import TEACHER
from shrinkflow.measure.benchmark_job import Job
from shrinkflow.measure.noise import Estimate, median_estimate

# --- statistics -----------------------------------------------------------------------------


def latency_stats(times_ms: list[float], batch_size: int) -> dict[str, float]:
    """Percentiles of per-call latency and throughput (images over total timed seconds)."""
    if not times_ms:
        raise ValueError("no timings to summarise")
    arr = np.asarray(times_ms, dtype=np.float64)
    p50, p90, p99 = np.percentile(arr, [50, 90, 99])
    return {
        "p50_ms": round(float(p50), 4),
        "p90_ms": round(float(p90), 4),
        "p99_ms": round(float(p99), 4),
        "mean_ms": round(float(arr.mean()), 4),
        "min_ms": round(float(arr.min()), 4),  # CSV only: shows contention when far below p50
        "calls": len(arr),
        "ips": round(batch_size * len(arr) / (float(arr.sum()) / 1000.0), 2),
    }


def result_row(
    job: Job, described: dict[str, Any], batch_size: int, rounds_ms: list[list[float]]
) -> dict[str, Any]:
    """One CSV row: a model at one batch size, its latency statistics (the median with its 95 %
    interval over the rounds, ``noise.median_estimate``), memory, size, counts and the software
    it ran on. ``round_p50_ms`` keeps each round's median: speed-ups are paired by round."""
    d = described
    times_ms = [t for calls in rounds_ms for t in calls]
    stats = latency_stats(times_ms, batch_size)
    round_p50 = [round(float(np.median(calls)), 4) for calls in rounds_ms if calls]
    spread = median_estimate(round_p50, center=stats["p50_ms"])
    return {
        "model": job.name,
        "runtime": d["runtime"],
        "precision": d["precision"],
        "device": d["device"],
        "threads": d["threads"],
        "batch_size": batch_size,
        **stats,
        # a detector's model calls per timed batch: 1 (one list of images) or the batch size
        # (one image a call); classification rows have no such column (benchmark_worker)
        **({"calls_per_batch": d["calls_per_batch"][str(batch_size)]}
           if "calls_per_batch" in d else {}),
        "p50_low_ms": round(spread.low, 4),  # 95 % interval of the median over the rounds
        "p50_high_ms": round(spread.high, 4),
        "rounds": len(round_p50),
        "round_p50_ms": " ".join(f"{v:g}" for v in round_p50),
        "rss_mb": d["rss_mb"][str(batch_size)],
        "rss_method": d["rss_method"],
        "file_bytes": d["file_bytes"],
        "params": d["params"],
        "macs": d["macs"],
        "cpu": d["cpu"],
        "torch_version": d["torch_version"],
        "onnxruntime_version": d["onnxruntime_version"],
    }


# glibc malloc, told to keep freed memory (blocks up to 32 MB come from the heap, and the heap is
# never trimmed). By default PyTorch eager's activations are returned to the kernel after every
# call and faulted in again on the next: ~500 page faults per batch-64 call of the student,
# whose cost on a VM swings by 1.5x from one process to the next. Serving setups avoid this with
# jemalloc/tcmalloc; these tunables do the same for the benchmark without a new dependency.
MALLOC_TUNABLES = "glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=17179869184"


def worker_env() -> dict[str, str]:
    """This process's environment plus ``MALLOC_TUNABLES`` (kept after any the user set)."""
    env = dict(os.environ)
    env["GLIBC_TUNABLES"] = ":".join(filter(None, [MALLOC_TUNABLES, env.get("GLIBC_TUNABLES")]))
    return env


# Workers are forked from one server process that has already imported torch, ONNX Runtime and
# ``bench_worker`` (multiprocessing's forkserver, the preload below). Starting 9 workers as fresh
# interpreters, each importing those on its own, took 11 s of the digits benchmark's 45 s on
# 2 cores. A forked worker is still its own process: its own heap, peak RSS and thread pools
# (the server runs no torch op, so no thread pool exists before the fork).
# Where there is no forkserver (Windows) workers are spawned, each importing on its own.
# ``open_model`` imports its ``.pt`` readers only when it opens a ``.pt`` (its ONNX path needs no
# torch), and they bring torchvision: 1.7 s of imports in every worker that opens one (5 of the
# 9 digits models) unless the server has them already.
_FORKS = "forkserver" in multiprocessing.get_all_start_methods()
_WORKER_CONTEXT = multiprocessing.get_context("forkserver" if _FORKS else "spawn")
_WORKER_PRELOAD = ["__main__", "shrinkflow.measure.benchmark_worker", "shrinkflow.model_files.pt",
                   "shrinkflow.model_files.torch_int8", "shrinkflow.nets.zoo"]


def _start_forkserver() -> None:
    """Start the server (once per process) with ``MALLOC_TUNABLES`` in its environment: glibc
    reads them when a program starts, and every worker forked from the server inherits them."""
    if not _FORKS:
        return
    _WORKER_CONTEXT.set_forkserver_preload(_WORKER_PRELOAD)
    saved = os.environ.get("GLIBC_TUNABLES")
    os.environ["GLIBC_TUNABLES"] = worker_env()["GLIBC_TUNABLES"]
    try:
        forkserver.ensure_running()
    finally:  # this process's own later children see the environment as it was
        if saved is None:
            del os.environ["GLIBC_TUNABLES"]
        else:
            os.environ["GLIBC_TUNABLES"] = saved


class Worker:
    """A child process holding one job's ``measure.benchmark_worker.LoadedModel``, timing calls when
    asked.

    Protocol (objects over a pipe): the child sends ``describe()`` once it is loaded and warmed
    up (or ``{"error": line}`` for bad input, ``{"crash": traceback}`` for anything else), then
    answers each ``(batch_size, calls)`` it receives with the list of latencies. ``None`` ends it.
    """

    def __init__(self, job: Job) -> None:
        self.job = job
        _start_forkserver()
        self._conn, child_conn = _WORKER_CONTEXT.Pipe()
        self._proc = _WORKER_CONTEXT.Process(target=_serve, args=(asdict(job), child_conn),
                                         name=f"bench-{job.name}", daemon=True)
        self._proc.start()
        child_conn.close()  # the child holds its end: EOF here when it dies

    def _reply(self) -> Any:
        try:
            reply = self._conn.recv()
        except EOFError:
            self._proc.join(timeout=30)
            raise ShrinkflowError(f"benchmark of {self.job.name} ({self.job.path}) failed: the "
                                  f"worker exited with code {self._proc.exitcode}") from None
        if isinstance(reply, dict) and "error" in reply:  # bad input: its one line says it all
            raise ShrinkflowError(reply["error"])
        if isinstance(reply, dict) and "crash" in reply:
            raise ShrinkflowError(
                f"benchmark of {self.job.name} ({self.job.path}) failed:\n{reply['crash']}")
        return reply

    def ready(self) -> dict[str, Any]:
        """Wait until the model is loaded and warmed up; its ``describe()``."""
        return self._reply()

    def time(self, batch_size: int, calls: int) -> list[float]:
        self._conn.send((batch_size, calls))
        return self._reply()

    def stop(self) -> None:
        """Ask the child to exit (without waiting: every worker winds down at once)."""
        try:
            self._conn.send(None)
        except (BrokenPipeError, OSError):  # already gone
            pass

    def close(self) -> None:
        self.stop()
        self._proc.join(timeout=30)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join()
        self._conn.close()


def _serve(job: dict[str, Any], conn: Connection) -> None:
    """A worker's body (``measure.benchmark_worker.serve``), imported here, in the worker, so that
    the parent runs without torch: the forkserver has already imported ``bench_worker``
    (``_WORKER_PRELOAD``),
    so this import costs the worker nothing, and the parent saves torch's import (about 2 s of
    CPU per benchmark run on 2 cores, measured)."""
    from shrinkflow.measure.benchmark_worker import serve

    serve(Job(**job), conn)


def split_calls(repeats: int, rounds: int) -> list[int]:
    """``repeats`` timed calls spread as evenly as possible over ``rounds`` (none empty)."""
    rounds = max(1, min(rounds, repeats))
    return [repeats // rounds + (1 if r < repeats % rounds else 0) for r in range(rounds)]


# Pause before each model's turn. Thread pools keep spinning on a core for a while after their
# last call (libgomp and ONNX Runtime both do, to answer the next call sooner), so without a pause
# the next model starts on a machine with one core still busy. Measured with 2 threads: after an
# ORT model, the pruned student's first three batch-64 calls took 6.9 ms instead of 3.3 ms with
# a 20 ms pause, and ran at full speed from the first call with 60 ms.
SETTLE_S = 0.06


def run_interleaved(
    jobs: list[Job],
    rounds: int,
    on_round: Callable[[int, int], None] | None = None,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Benchmark every job in its own worker, in ``rounds`` rounds of a few calls per model.

    Each round visits the models in a fresh seeded random order, so no model always follows the
    same neighbour. Rows come back in job order, one per model and batch size.
    """
    rng = np.random.default_rng(seed)
    workers = [Worker(job) for job in jobs]  # all start (import, load, warm up) in parallel
    try:
        described = [w.ready() for w in workers]
        plans = [split_calls(job.repeats, rounds) for job in jobs]
        n_rounds = max(len(plan) for plan in plans)
        times: dict[tuple[int, int], list[list[float]]] = {}
        for r in range(n_rounds):
            for i in rng.permutation(len(jobs)).tolist():
                if r >= len(plans[i]):
                    continue
                time.sleep(SETTLE_S)
                for b in sorted(jobs[i].batch_sizes):
                    times.setdefault((i, b), []).append(workers[i].time(b, plans[i][r]))
            if on_round is not None:
                on_round(r + 1, n_rounds)
    finally:
        for w in workers:
            w.stop()
        for w in workers:  # exiting takes each ~0.5 s (torch, ONNX Runtime): all at once
            w.close()
    return [result_row(job, described[i], b, times[(i, b)])
            for i, job in enumerate(jobs) for b in sorted(job.batch_sizes)]


# --- from rows to ratios ------------------------------------------------------------------------


def _ratio(numerator: float | None, denominator: float | None, digits: int) -> float | None:
    if not numerator or not denominator:
        return None
    return round(numerator / denominator, digits)


def runtime_family(runtime: str | None) -> str | None:
    """The runtime a model's speed is fairly compared within: ``torch`` and ``torch_int8`` are
    both PyTorch, ``onnxruntime`` is ONNX Runtime (fp32 or int8)."""
    if runtime is None:
        return None
    return "torch" if str(runtime).startswith("torch") else str(runtime)


def _same_runtime_teachers(
    rows: list[dict[str, Any]], teachers: tuple[str, ...]
) -> dict[tuple[str | None, int], str]:
    """(runtime family, batch size) -> the teacher's form measured in that runtime (the first
    of ``teachers`` measured there)."""
    found: dict[tuple[str | None, int], str] = {}
    for name in teachers:
        for r in rows:
            key = (runtime_family(r.get("runtime")), r["batch_size"])
            if r["model"] == name and key not in found:
                found[key] = name
    return found


def _round_values(row: dict[str, Any]) -> list[float]:
    return [float(v) for v in str(row.get("round_p50_ms") or "").split()]


def speedup_estimate(reference: dict[str, Any], row: dict[str, Any]) -> Estimate | None:
    """The reference's median / the row's (>1 = faster), with the 95 % interval of the per-round
    ratios: both were timed in the same rounds of one run, so each round pairs them under the
    same machine state. None when they were not timed in one run (different round counts)."""
    ref_rounds, rounds = _round_values(reference), _round_values(row)
    if not row["p50_ms"] or not reference["p50_ms"]:
        return None
    value = reference["p50_ms"] / row["p50_ms"]
    if not rounds or len(rounds) != len(ref_rounds) or not all(rounds):
        return Estimate(value, value, value)
    return median_estimate([a / b for a, b in zip(ref_rounds, rounds, strict=True)], value)


def add_ratios(
    rows: list[dict[str, Any]], baselines: dict[str, str | None],
    teachers: tuple[str, ...] = (TEACHER,),
) -> list[dict[str, Any]]:
    """Rows with speed-up and size columns: ``speedup_vs_teacher`` (the teacher's median latency
    at the same batch size / this model's, >1 = faster), ``speedup_vs_teacher_same_runtime``
    (against the teacher's form in the same runtime family, ``teachers`` = the teacher and its
    exports, e.g. ``("teacher", "teacher_onnx")``: compression's gain without the runtime's) with
    its 95 % interval over the rounds (``..._low`` / ``..._high``, ``speedup_estimate``),
    ``speedup_vs_baseline`` against the model ``baselines`` names for it (e.g. int8 against the
    fp32 of the same weights), and ``size_ratio_vs_teacher`` (file bytes, <1 = smaller). Ratios
    whose reference was not measured are left empty rather than guessed.
    """
    by_key = {(r["model"], r["batch_size"]): r for r in rows}
    same = _same_runtime_teachers(rows, teachers)
    size = {r["model"]: r["file_bytes"] for r in rows}
    out = []
    for r in rows:
        base, b = baselines.get(r["model"]), r["batch_size"]
        family = runtime_family(r.get("runtime"))
        teacher = by_key.get((TEACHER, b))
        ref = by_key.get((same[(family, b)], b)) if (family, b) in same else None
        same_speedup = speedup_estimate(ref, r) if ref else None
        out.append({
            **r,
            "speedup_vs_teacher": _ratio(teacher["p50_ms"] if teacher else None, r["p50_ms"], 3),
            "speedup_vs_teacher_same_runtime": round(same_speedup.value, 3)
            if same_speedup else None,
            "speedup_vs_teacher_same_runtime_low": round(same_speedup.low, 3)
            if same_speedup else None,
            "speedup_vs_teacher_same_runtime_high": round(same_speedup.high, 3)
            if same_speedup else None,
            "baseline": base,
            "speedup_vs_baseline": _ratio(by_key[(base, b)]["p50_ms"], r["p50_ms"], 3)
            if base and (base, b) in by_key else None,
            "size_ratio_vs_teacher": _ratio(r["file_bytes"], size.get(TEACHER), 6),
        })
    return out


def p50_drift(
    first: list[dict[str, Any]], second: list[dict[str, Any]], baseline: str = "teacher"
) -> list[dict[str, Any]]:
    """Per model x batch size: how far the second run's median latency moved from the first's.

    The stability check. ``drift_pct`` compares absolute medians: on a quiet machine they agree
    within ~15%. ``speedup_drift_pct`` compares the speed-up against ``baseline`` measured in the
    same run, which cancels what slowed the whole machine down between the two runs; a large
    ``drift_pct`` with a small ``speedup_drift_pct`` means the machine changed, not the models.
    """
    before = {(r["model"], r["batch_size"]): r["p50_ms"] for r in first}
    after = {(r["model"], r["batch_size"]): r["p50_ms"] for r in second}
    drift = []
    for (model, b), ms in after.items():
        if before.get((model, b), 0) <= 0 or ms <= 0:
            continue
        entry = {"model": model, "batch_size": b, "p50_ms_1": before[(model, b)], "p50_ms_2": ms,
                 "drift_pct": round((ms / before[(model, b)] - 1) * 100, 2)}
        if model != baseline and (baseline, b) in before and (baseline, b) in after:
            speedup_1 = before[(baseline, b)] / before[(model, b)]
            speedup_2 = after[(baseline, b)] / ms
            entry |= {"speedup_1": round(speedup_1, 3), "speedup_2": round(speedup_2, 3),
                      "speedup_drift_pct": round((speedup_2 / speedup_1 - 1) * 100, 2)}
        drift.append(entry)
    return drift


# --- keeping rows of unchanged models ---------------------------------------------------------


def settings_key(batch_sizes: list[int], repeats: int, rounds: int, warmup: int, threads: int,
                 device: str, cpu: str) -> str:
    """What a timing depends on besides the model file: a kept row must match it exactly."""
    sizes = ",".join(str(b) for b in sorted(batch_sizes))
    return f"b{sizes} r{repeats}/{rounds} w{warmup} t{threads} {device} {cpu}"


def reusable_rows(
    previous: list[dict[str, Any]], hashes: dict[str, str], settings: str,
    always: tuple[str, ...],
) -> dict[str, list[dict[str, Any]]]:
    """model -> its previous rows, for models whose file (``hashes``: name -> SHA-256) and
    ``settings`` are unchanged and that are not in ``always`` (the teacher forms, the speed-ups'
    reference, re-timed every run). Nothing is kept when a model of ``always`` changed."""
    by_model: dict[str, list[dict[str, Any]]] = {}
    for r in previous:
        by_model.setdefault(str(r.get("model")), []).append(r)

    def unchanged(name: str) -> bool:
        rows = by_model.get(name, [])
        return bool(rows) and all(r.get("file_sha256") == hashes.get(name)
                                  and r.get("settings") == settings for r in rows)

    if not all(unchanged(name) for name in always if name in hashes):
        return {}
    return {name: rows for name, rows in by_model.items()
            if name in hashes and name not in always and unchanged(name)}
