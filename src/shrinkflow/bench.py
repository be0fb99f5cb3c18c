"""Latency, throughput and memory of every model, each measured in its own fresh process.

Why a subprocess per model: peak RSS and allocator/thread-pool state are per process, so a model
measured after another one would inherit its heap and warm caches. Each worker loads one model,
builds one seeded input per batch size, runs ``warmup`` untimed calls then ``repeats`` timed calls
(``time.perf_counter``, ``torch.inference_mode``, ``torch.cuda.synchronize`` around each call on
CUDA) and reports percentiles.

Memory: before each batch size the worker resets the kernel's peak-RSS counter (writing ``5`` to
``/proc/self/clear_refs`` resets ``VmHWM``, Linux >= 4.0) and reports ``VmHWM - VmRSS`` after the
timed runs: the extra resident memory inference needed beyond the loaded model and its input.
Where that reset is not available, it falls back to ``getrusage`` max-RSS growth, which misses
memory that was already at its peak before the run (the ``rss_method`` field says which).

Runtimes: ``torch`` (fp32 eager ``.pt``), ``torch_int8`` (``quantize.load_torch_int8``) and
``onnxruntime`` (``.onnx``). int8 and ONNX Runtime always run on the CPU.
"""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from shrinkflow.errors import ShrinkflowError

RUNTIMES = ("torch", "torch_int8", "onnxruntime")
PRECISION = {"torch": "fp32", "torch_int8": "int8", "onnxruntime": "fp32"}


@dataclass
class Job:
    """One model to benchmark, in plain data so it can be passed to a worker process as JSON."""

    name: str
    path: str
    runtime: str  # one of RUNTIMES
    input_shape: list[int]  # C, H, W
    batch_sizes: list[int]
    repeats: int = 50
    warmup: int = 10
    threads: int = 1
    device: str = "cpu"
    seed: int = 0
    precision: str = field(default="")

    def __post_init__(self) -> None:
        if self.runtime not in RUNTIMES:
            raise ValueError(f"unknown runtime {self.runtime!r}; expected one of {RUNTIMES}")
        self.precision = self.precision or PRECISION[self.runtime]
        if self.runtime != "torch":
            self.device = "cpu"  # int8 kernels and our ORT session are CPU-only


def resolve_threads(threads: int) -> int:
    """0 means every core this process may run on (affinity-aware, unlike os.cpu_count)."""
    if threads > 0:
        return threads
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def cpu_name() -> str:
    """The CPU model string, so a benchmark result says what it was measured on."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    match = re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
    return match.group(1).strip() if match else platform.machine()


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
        "ips": round(batch_size * len(arr) / (float(arr.sum()) / 1000.0), 2),
    }


def time_calls(
    fn: Callable[[], Any], warmup: int, repeats: int, sync: Callable[[], None] | None = None
) -> list[float]:
    """Milliseconds of ``repeats`` calls of ``fn`` after ``warmup`` untimed ones.

    ``sync`` (``torch.cuda.synchronize`` on GPU) runs before starting and before stopping each
    clock, so asynchronous kernels are counted in the call that launched them.
    """
    sync = sync or (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - start) * 1000.0)
    return times


# --- memory ---------------------------------------------------------------------------------


def _proc_status_kb(key: str) -> int:
    match = re.search(rf"^{key}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.MULTILINE)
    if not match:
        raise OSError(f"{key} not in /proc/self/status")
    return int(match.group(1))


class PeakRss:
    """Extra peak resident memory (MB) of the code run between ``start()`` and ``stop()``."""

    def __init__(self) -> None:
        self.method = "vmhwm_reset"
        self._base_kb = 0

    def start(self) -> None:
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self._base_kb = _proc_status_kb("VmRSS")
        except OSError:
            import resource

            self.method = "maxrss_growth"
            self._base_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    def stop(self) -> float:
        if self.method == "vmhwm_reset":
            peak_kb = _proc_status_kb("VmHWM")
        else:
            import resource

            peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return round(max(peak_kb - self._base_kb, 0) / 1024.0, 3)


# --- loading one model into a callable --------------------------------------------------------


def _load(job: Job, threads: int) -> tuple[Callable[[Any], Any], str, dict[str, Any]]:
    """(run(batch), kind of input it takes, {params, macs}) for one job's model file."""
    import torch

    from shrinkflow.models import count_macs, count_params

    shape = tuple(job.input_shape)
    if job.runtime == "onnxruntime":
        from shrinkflow.quantize import META_MACS, META_PARAMS, onnx_metadata, ort_session

        session = ort_session(job.path, threads=threads)
        input_name = session.get_inputs()[0].name
        meta = onnx_metadata(job.path)
        info = {
            "params": _int_or_none(meta.get(META_PARAMS)),
            "macs": _int_or_none(meta.get(META_MACS)),
        }
        return (lambda x: session.run(None, {input_name: x})), "numpy", info
    if job.runtime == "torch_int8":
        from shrinkflow.quantize import load_torch_int8

        model = load_torch_int8(job.path)
        return model.eval(), "torch", _fp32_counts_of_int8(job.path)
    from shrinkflow.artifacts import load_model

    model, _ = load_model(job.path)
    info = {"params": count_params(model), "macs": count_macs(model, shape)}
    device = torch.device(job.device)
    return model.to(device).eval(), "torch", info


def _fp32_counts_of_int8(path: str) -> dict[str, Any]:
    """Params/MACs of the fp32 model an int8 file was made from, as stored in its ``meta``.

    Why: FlopCounterMode counts 0 for quantized modules, and every flavour of one model should
    report the same MACs (ONNX files carry them as metadata for the same reason).
    """
    from shrinkflow.artifacts import load_checkpoint

    meta = load_checkpoint(path).get("meta") or {}
    return {"params": meta.get("params"), "macs": meta.get("macs")}


def _int_or_none(value: str | None) -> int | None:
    try:
        return int(float(value)) if value is not None else None
    except ValueError:
        return None


def make_input(shape: list[int], batch_size: int, seed: int, device: str = "cpu") -> Any:
    """A seeded random image batch scaled like ``train.to_input`` (uint8 / 255), float32 NCHW."""
    import torch

    generator = torch.Generator().manual_seed(seed + batch_size)
    x = torch.randint(0, 256, (batch_size, *shape), generator=generator, dtype=torch.uint8)
    return x.float().div_(255).to(device)


def run_job(job: Job) -> list[dict[str, Any]]:
    """Benchmark one model in this process: one result row per batch size."""
    import torch

    threads = resolve_threads(job.threads)
    torch.set_num_threads(threads)
    if job.device == "cuda" and not torch.cuda.is_available():
        raise ShrinkflowError("benchmark.device is 'cuda' but torch.cuda.is_available() is False")
    run, kind, info = _load(job, threads)
    sync = torch.cuda.synchronize if job.device == "cuda" else None
    rows = []
    for batch_size in sorted(job.batch_sizes):
        x = make_input(job.input_shape, batch_size, job.seed, job.device)
        x = x.cpu().numpy() if kind == "numpy" else x
        memory = PeakRss()
        with torch.inference_mode():
            memory.start()
            times = time_calls(lambda x=x: run(x), job.warmup, job.repeats, sync)
            rss_mb = memory.stop()
        rows.append(
            {
                "model": job.name,
                "runtime": job.runtime,
                "precision": job.precision,
                "device": job.device,
                "threads": threads,
                "batch_size": batch_size,
                **latency_stats(times, batch_size),
                "rss_mb": rss_mb,
                "rss_method": memory.method,
                "file_bytes": Path(job.path).stat().st_size,
                **info,
            }
        )
    return rows


def run_job_isolated(job: Job, timeout_s: float = 1800.0) -> list[dict[str, Any]]:
    """``run_job`` in a fresh Python process (``python -m shrinkflow.bench JOB_JSON``)."""
    cmd = [sys.executable, "-m", "shrinkflow.bench", json.dumps(asdict(job))]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        raise ShrinkflowError(f"benchmark of {job.name} ({job.path}) failed:\n{tail}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --- from rows to flat metrics --------------------------------------------------------------

# (model, baseline, suffix): speed-up = baseline p50 / model p50, for every batch size present.
COMPARISONS_VS = ("teacher", "student")
EXTRA_COMPARISONS = (
    ("quantized", "pruned_onnx"),  # int8 ORT against fp32 ORT of the same weights
    ("pruned_onnx", "pruned"),  # ORT against PyTorch eager, same weights
    ("quantized_torch", "pruned"),  # torch int8 against torch fp32 (if quantize.input=pruned)
)


def flat_metrics(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Flat ``bench_*`` keys from result rows, plus speed-up and size ratios between models.

    ``speedup_vs_X`` = X's median latency / this model's (>1 = faster); ``size_ratio_vs_X`` =
    this model's file bytes / X's (<1 = smaller). Ratios whose baseline was not measured are left
    out rather than guessed.
    """
    out: dict[str, Any] = {}
    p50: dict[tuple[str, int], float] = {}
    size: dict[str, int] = {}
    for row in rows:
        name, b = row["model"], row["batch_size"]
        for key in ("p50_ms", "p90_ms", "p99_ms", "ips", "rss_mb"):
            out[f"bench_{name}_b{b}_{key}"] = row[key]
        p50[(name, b)] = row["p50_ms"]
        size[name] = row["file_bytes"]
        out[f"bench_{name}_file_bytes"] = row["file_bytes"]
        for key in ("params", "macs"):
            if row.get(key) is not None:
                out[f"bench_{name}_{key}"] = row[key]
    pairs = [(m, base) for (m, _) in p50 for base in COMPARISONS_VS if m != base]
    pairs += [pair for pair in EXTRA_COMPARISONS if pair[0] in size]
    for model, base in dict.fromkeys(pairs):
        for (name, b), ms in p50.items():
            if name == model and (base, b) in p50 and ms > 0:
                out[f"bench_{model}_b{b}_speedup_vs_{base}"] = round(p50[(base, b)] / ms, 3)
        if model in size and size.get(base):
            out[f"bench_{model}_size_ratio_vs_{base}"] = round(size[model] / size[base], 6)
    return out


def p50_drift(first: list[dict[str, Any]], second: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per model x batch size: how far the second run's median latency is from the first's, in %.

    The stability check: the same models benchmarked twice should agree within ~15% on a quiet
    machine; larger drift means the numbers measure the machine's load, not the model.
    """
    before = {(r["model"], r["batch_size"]): r["p50_ms"] for r in first}
    drift = []
    for r in second:
        key = (r["model"], r["batch_size"])
        if key in before and before[key] > 0:
            pct = (r["p50_ms"] / before[key] - 1) * 100
            drift.append({"model": key[0], "batch_size": key[1], "p50_ms_1": before[key],
                          "p50_ms_2": r["p50_ms"], "drift_pct": round(pct, 2)})
    return drift


def environment(threads: int, device: str, repeats: int, warmup: int) -> dict[str, Any]:
    """Where and how the numbers were taken: they mean little without this."""
    import onnxruntime
    import torch

    return {
        "bench_threads": resolve_threads(threads),
        "bench_device": device,
        "bench_repeats": repeats,
        "bench_warmup": warmup,
        "bench_cpu": cpu_name(),
        "bench_torch_version": torch.__version__,
        "bench_onnxruntime_version": onnxruntime.__version__,
    }


def _worker_main(argv: list[str]) -> None:
    """Entry of the worker process: one Job as JSON in argv, result rows as JSON on stdout."""
    job = Job(**json.loads(argv[1]))
    rows = run_job(job)
    print(json.dumps(rows))


if __name__ == "__main__":
    _worker_main(sys.argv)
