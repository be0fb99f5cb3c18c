"""benchmark: latency / throughput / memory of every model of models.yaml, in interleaved rounds.

Writes one row per model x batch size to metrics/benchmark.csv (every statistic, memory, size,
counts, speed-up and size ratios, software versions) and the headline figures to
metrics/benchmark.json: median latency per model and batch size, speed-up against the teacher in
the same runtime (the teacher's ONNX export for ONNX Runtime models: compression's gain alone), and
the runtime's gain (teacher in PyTorch -> teacher in ONNX Runtime).

    python stages/benchmark.py               # the DVC stage
    python stages/benchmark.py --stability   # by hand: run twice, print how far results moved
"""

import argparse
import time

from shrinkflow.core.errors import run_stage
from shrinkflow.core.metric_keys import TEACHER, ModelEntry, bench_key, read_model_list
from shrinkflow.core.outputs import commit_outputs, read_json, require_inputs
from shrinkflow.measure.benchmark import add_ratios, headline_metrics, p50_drift, run_interleaved
from shrinkflow.measure.benchmark_job import Job, resolve_threads
from shrinkflow.params.benchmark import BenchmarkParams
from shrinkflow.params.load import load_section

META = "data/prepared/meta.json"
MODEL_LIST = "models.yaml"
JSON_OUT = "metrics/benchmark.json"
CSV_OUT = "metrics/benchmark.csv"


def main() -> None:
    parser = argparse.ArgumentParser(description="benchmark every model")
    parser.add_argument("--stability", action="store_true",
                        help="run the whole benchmark twice and print the median-latency drift")
    args = parser.parse_args()
    p = load_section(BenchmarkParams)
    models = read_model_list(MODEL_LIST)
    require_inputs("benchmark", {META: "prepare", **{m.file: m.stage for m in models}})
    shape = read_json(META)["shape"]
    threads = resolve_threads(p.threads)
    print(f"[benchmark] {len(models)} models, batch sizes {p.batch_sizes}, {p.warmup} warm-up + "
          f"{p.repeats} timed runs in {p.rounds} rounds, {threads} threads, device {p.device}, "
          f"input {shape}")
    rows = run_all(models, p, shape, threads)
    if args.stability:
        print("[benchmark] stability check: second run of every model")
        first, rows = rows, run_all(models, p, shape, threads)
        report_stability(p50_drift(first, rows))
    # the teacher and its exports (teacher_onnx): each model's same-runtime reference
    teachers = tuple(m.name for m in models if m.accuracy_of == TEACHER)
    rows = add_ratios(rows, {m.name: m.baseline for m in models}, teachers)
    metrics = headline_metrics(rows, teachers)
    with commit_outputs() as out:
        out.csv(CSV_OUT, rows)
        out.json(JSON_OUT, metrics)
    b = max(p.batch_sizes)
    for field, what in (("speedup_vs_teacher", "runtime's gain (teacher torch -> export)"),
                        ("speedup_vs_teacher_same_runtime", "speed-up vs teacher, same runtime")):
        summary = ", ".join(f"{m.name} {metrics[bench_key(m.name, b, field)]:.2f}x"
                            for m in models if bench_key(m.name, b, field) in metrics)
        print(f"[benchmark] b{b} {what}: {summary or '-'}")
    print(f"[benchmark] wrote {JSON_OUT} ({len(metrics)} keys) and {CSV_OUT} ({len(rows)} rows)")


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
    jobs = [Job(m.name, m.file, list(shape), list(p.batch_sizes), p.repeats, p.warmup, threads,
                p.device) for m in models]
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
