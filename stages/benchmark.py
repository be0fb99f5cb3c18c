"""benchmark: latency / throughput / memory of every model of models.yaml, in interleaved rounds.

Writes one row per model x batch size to metrics/benchmark.csv: every statistic (the median with
its 95 % interval over the rounds), memory, size, counts, speed-up against the teacher in the
same runtime (the teacher's ONNX export for ONNX Runtime models: compression's gain alone) with
its interval, the runtime's gain (teacher in PyTorch -> teacher in ONNX Runtime), software
versions. Models whose file and settings are unchanged since the last run keep their rows; the
others are timed together with the teacher forms (shrinkflow.measure.benchmark.reusable_rows).

On detection data (prepare.task: detection) each model is timed as a detector, post-processing
included: batch B is the first B test images in, final boxes out (random pixels would leave the
NMS nothing to do), and img/s counts images. A
PyTorch FCOS takes the B images as one list (one call); an ONNX detector file takes one image
per call, so its batch B is B calls in a row; those rows' ``calls_per_batch`` column says which
(shrinkflow.measure.benchmark_worker.timed_call, the one place the tasks differ).

    python stages/benchmark.py               # the DVC stage
    python stages/benchmark.py --stability   # by hand: run twice, print how far results moved
"""

import argparse
import csv
import hashlib
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from shrinkflow.core.errors import run_stage
from shrinkflow.core.metric_keys import TEACHER, ModelEntry, read_model_list
from shrinkflow.core.outputs import commit_outputs, read_json, require_inputs
from shrinkflow.core.tasks import DETECTION, prepared_task
from shrinkflow.measure.benchmark import (
    add_ratios,
    p50_drift,
    reusable_rows,
    run_interleaved,
    settings_key,
)
from shrinkflow.measure.benchmark_job import Job, cpu_name, resolve_threads
from shrinkflow.params.benchmark import BenchmarkParams
from shrinkflow.params.ladder import LadderParams
from shrinkflow.params.load import load_section

DATA_DIR = "data/prepared"
META = f"{DATA_DIR}/meta.json"
MODEL_LIST = "models.yaml"
CSV_OUT = "metrics/benchmark.csv"


def main() -> None:
    parser = argparse.ArgumentParser(description="benchmark every model")
    parser.add_argument("--stability", action="store_true",
                        help="run the whole benchmark twice and print the median-latency drift")
    args = parser.parse_args()
    p = load_section(BenchmarkParams)
    models = read_model_list(MODEL_LIST, load_section(LadderParams).rungs)
    require_inputs("benchmark", {META: "prepare", **{m.file: m.stage for m in models}})
    shape = read_json(META)["shape"]
    threads = resolve_threads(p.threads)
    print(f"[benchmark] {len(models)} models, batch sizes {p.batch_sizes}, {p.warmup} warm-up + "
          f"{p.repeats} timed runs in {p.rounds} rounds, {threads} threads, device {p.device}, "
          f"input {shape}")
    teachers = tuple(m.name for m in models if m.accuracy_of == TEACHER)  # the references
    settings = settings_key(p.batch_sizes, p.repeats, p.rounds, p.warmup, threads, p.device,
                            cpu_name())
    hashes = {m.name: file_sha256(m.file) for m in models}
    kept = {} if args.stability else reusable_rows(read_rows(CSV_OUT), hashes, settings, teachers)
    timed = [m for m in models if m.name not in kept]
    if kept:
        print(f"[benchmark] unchanged since their last timing, rows kept: {', '.join(kept)}; "
              f"timing {', '.join(m.name for m in timed)}")
    rows = run_all(timed, p, shape, threads)
    if args.stability:
        print("[benchmark] stability check: second run of every model")
        first, rows = rows, run_all(timed, p, shape, threads)
        report_stability(p50_drift(first, rows))
    now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    rows = [{**r, "file_sha256": hashes[r["model"]], "settings": settings, "timed_at": now}
            for r in add_ratios(rows, {m.name: m.baseline for m in models}, teachers)]
    new = {m.name: [r for r in rows if r["model"] == m.name] for m in timed}
    rows = [r for m in models for r in (kept.get(m.name) or new[m.name])]
    with commit_outputs() as out:
        out.csv(CSV_OUT, rows, fieldnames=list(new[timed[0].name][0]))
    b = max(p.batch_sizes)
    for field, what in (("speedup_vs_teacher", "runtime's gain (teacher torch -> export)"),
                        ("speedup_vs_teacher_same_runtime", "speed-up vs teacher, same runtime")):
        summary = ", ".join(f"{r['model']} {float(r[field]):.2f}x" for r in rows
                            if r["batch_size"] == b and r[field] not in (None, "")
                            and r["model"] != TEACHER)
        print(f"[benchmark] b{b} {what}: {summary or '-'}")
    print(f"[benchmark] wrote {CSV_OUT} ({len(rows)} rows, {len(timed)} models timed)")


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_rows(path: str) -> list[dict[str, Any]]:
    """The previous run's rows with numbers as numbers (none when there is no previous run)."""
    if not Path(path).is_file():
        return []
    with open(path, newline="") as fh:
        return [{k: _value(v) for k, v in r.items()} for r in csv.DictReader(fh)]


def _value(text: str | None) -> Any:
    if text in (None, ""):
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def report_stability(drift: list[dict]) -> None:
    """Print how far each median and each speed-up vs the teacher moved between the two runs."""
    for d in drift:
        line = (f"[benchmark] drift {d['model']:<16} b{d['batch_size']:<4} "
                f"{d['p50_ms_1']:9.3f} -> {d['p50_ms_2']:9.3f} ms {d['drift_pct']:+7.1f}%")
        if "speedup_drift_pct" in d:
            line += (f" | vs teacher {d['speedup_1']:6.2f}x -> {d['speedup_2']:6.2f}x "
                     f"{d['speedup_drift_pct']:+7.1f}%")
        print(line)
    for key, what in (("drift_pct", "median latency"), ("speedup_drift_pct", "speedup vs teacher")):
        worst = round(max(abs(d[key]) for d in drift if key in d), 1)  # judge what is printed
        print(f"[benchmark] max |drift| of {what}: {worst}% "
              f"({'within' if worst <= 15 else 'OUTSIDE'} 15%)")


def run_all(
    models: list[ModelEntry], p: BenchmarkParams, shape: list[int], threads: int
) -> list[dict]:
    """Every model in its own worker process, timed in interleaved rounds; prints each result."""
    scenes = DATA_DIR if prepared_task(DATA_DIR) == DETECTION else ""
    jobs = [Job(m.name, m.file, list(shape), list(p.batch_sizes), p.repeats, p.warmup, threads,
                p.device, scenes=scenes) for m in models]
    started = time.perf_counter()

    def progress(done: int, total: int) -> None:
        if done == total or done % max(total // 5, 1) == 0:
            print(f"[benchmark] round {done}/{total} ({time.perf_counter() - started:.1f} s)")

    rows = run_interleaved(jobs, p.rounds, progress)
    for r in rows:
        print(f"[benchmark] {r['model']:<16} {r['runtime'] + ' ' + r['precision']:<16} "
              f"b{r['batch_size']:<4} "
              f"p50 {r['p50_ms']:8.3f} ms  p99 {r['p99_ms']:8.3f} ms  "
              f"{r['ips']:10.1f} img/s  +{r['rss_mb']:.1f} MB")
    return rows


if __name__ == "__main__":
    run_stage(main)
