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

Each worker loads one model and builds one seeded input per batch size; timing is
``time.perf_counter`` around single calls under ``torch.inference_mode`` (``torch.cuda.synchronize``
around each call on CUDA). Every round starts a model's turn with one untimed call, since the
previous worker has just evicted its weights from the CPU caches.

Memory: during warm-up of each batch size the worker resets the kernel's peak-RSS counter (writing
``5`` to ``/proc/self/clear_refs`` resets ``VmHWM``, Linux >= 4.0) and reports ``VmHWM - VmRSS``
afterwards: the extra resident memory inference needed beyond the loaded model and its input.
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
import tempfile
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
        "calls": len(arr),
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


class LoadedModel:
    """One job's model and inputs, loaded and warmed up in this process, ready to time calls."""

    def __init__(self, job: Job) -> None:
        import torch

        self.job = job
        self.threads = resolve_threads(job.threads)
        torch.set_num_threads(self.threads)
        if job.device == "cuda" and not torch.cuda.is_available():
            raise ShrinkflowError(
                "benchmark.device is 'cuda' but torch.cuda.is_available() is False"
            )
        self._run, kind, self.info = _load(job, self.threads)
        self._sync = torch.cuda.synchronize if job.device == "cuda" else None
        self._inputs: dict[int, Any] = {}
        self.rss_mb: dict[int, float] = {}
        memory = PeakRss()
        for batch_size in sorted(job.batch_sizes):
            x = make_input(job.input_shape, batch_size, job.seed, job.device)
            self._inputs[batch_size] = x.cpu().numpy() if kind == "numpy" else x
            with torch.inference_mode():
                memory.start()  # at least one call, so the peak is never of an empty run
                time_calls(self._call(batch_size), max(job.warmup, 1), 0, self._sync)
                self.rss_mb[batch_size] = memory.stop()
        self.rss_method = memory.method

    def _call(self, batch_size: int) -> Callable[[], Any]:
        x = self._inputs[batch_size]
        return lambda: self._run(x)

    def time(self, batch_size: int, calls: int) -> list[float]:
        """Milliseconds of ``calls`` timed calls, after one untimed call to re-warm the caches."""
        import torch

        with torch.inference_mode():
            return time_calls(self._call(batch_size), 1, calls, self._sync)

    def describe(self) -> dict[str, Any]:
        """What a result row needs besides the timings, in JSON-able form."""
        return {"threads": self.threads, "info": self.info, "rss_method": self.rss_method,
                "rss_mb": {str(b): mb for b, mb in self.rss_mb.items()}}


def result_row(
    job: Job, described: dict[str, Any], batch_size: int, times_ms: list[float]
) -> dict[str, Any]:
    """One CSV row: a model at one batch size, its latency statistics, memory, size and counts."""
    return {
        "model": job.name,
        "runtime": job.runtime,
        "precision": job.precision,
        "device": job.device,
        "threads": described["threads"],
        "batch_size": batch_size,
        **latency_stats(times_ms, batch_size),
        "rss_mb": described["rss_mb"][str(batch_size)],
        "rss_method": described["rss_method"],
        "file_bytes": Path(job.path).stat().st_size,
        **described["info"],
    }


def run_job(job: Job) -> list[dict[str, Any]]:
    """Benchmark one model in this process, all its calls in one go: one row per batch size."""
    model = LoadedModel(job)
    described = model.describe()
    return [result_row(job, described, b, model.time(b, job.repeats))
            for b in sorted(job.batch_sizes)]


class Worker:
    """A child process holding one job's ``LoadedModel``, timing calls when asked.

    Protocol (one JSON document per line): the child writes ``describe()`` once it is loaded and
    warmed up, then answers each ``{"batch_size": B, "calls": N}`` read from its stdin with the
    list of N latencies. Closing its stdin ends it.
    """

    def __init__(self, job: Job) -> None:
        self.job = job
        self._stderr = tempfile.TemporaryFile(mode="w+")  # a file, so a chatty child never blocks
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "shrinkflow.bench", json.dumps(asdict(job))],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr, text=True,
            env=worker_env(),
        )

    def _reply(self) -> Any:
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()
        if not line:
            self._proc.wait()
            self._stderr.seek(0)
            tail = "\n".join(self._stderr.read().strip().splitlines()[-15:])
            raise ShrinkflowError(f"benchmark of {self.job.name} ({self.job.path}) failed:\n{tail}")
        return json.loads(line)

    def ready(self) -> dict[str, Any]:
        """Wait until the model is loaded and warmed up; its ``describe()``."""
        return self._reply()

    def time(self, batch_size: int, calls: int) -> list[float]:
        assert self._proc.stdin is not None
        self._proc.stdin.write(json.dumps({"batch_size": batch_size, "calls": calls}) + "\n")
        self._proc.stdin.flush()
        return self._reply()

    def close(self) -> None:
        if self._proc.stdin is not None:
            self._proc.stdin.close()
        try:
            self._proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._proc.kill()
        self._stderr.close()


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
        times: dict[tuple[int, int], list[float]] = {}
        for r in range(n_rounds):
            for i in rng.permutation(len(jobs)).tolist():
                if r >= len(plans[i]):
                    continue
                time.sleep(SETTLE_S)
                for b in sorted(jobs[i].batch_sizes):
                    times.setdefault((i, b), []).extend(workers[i].time(b, plans[i][r]))
            if on_round is not None:
                on_round(r + 1, n_rounds)
    finally:
        for w in workers:
            w.close()
    return [result_row(job, described[i], b, times[(i, b)])
            for i, job in enumerate(jobs) for b in sorted(job.batch_sizes)]


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


def environment(
    threads: int, device: str, repeats: int, warmup: int, rounds: int
) -> dict[str, Any]:
    """Where and how the numbers were taken: they mean little without this."""
    import onnxruntime
    import torch

    return {
        "bench_threads": resolve_threads(threads),
        "bench_device": device,
        "bench_repeats": repeats,
        "bench_rounds": rounds,
        "bench_warmup": warmup,
        "bench_cpu": cpu_name(),
        "bench_torch_version": torch.__version__,
        "bench_onnxruntime_version": onnxruntime.__version__,
    }


def _worker_main(argv: list[str]) -> None:
    """Entry of a worker process: see ``Worker`` for the protocol."""
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # stray prints must not corrupt replies

    def reply(obj: Any) -> None:
        replies.write(json.dumps(obj) + "\n")
        replies.flush()

    model = LoadedModel(Job(**json.loads(argv[1])))
    reply(model.describe())
    for line in sys.stdin:
        request = json.loads(line)
        reply(model.time(request["batch_size"], request["calls"]))


if __name__ == "__main__":
    _worker_main(sys.argv)
