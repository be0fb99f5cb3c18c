"""Why is int8 ONNX slower than fp32 ONNX for our small models? One table of ORT variants.

    python benchmarks/int8_variants.py MODEL.pt DATA_DIR [--batch 64] [--threads 2]
        [--rounds 15] [--calls 20] [--workdir /tmp/sf-int8-variants]

Exports ``MODEL.pt`` (a shrinkflow fp32 model file, e.g. the MNIST pruned model) to fp32 ONNX,
quantizes it in each variant (QDQ vs QOperator format, uint8 / int8 activations and weights,
per-channel or per-tensor weights, ``reduce_range``, only the convs, only the wide convs), and
times every ONNX Runtime session at one batch size. Sessions take turns round by round, so
load from other processes hits all of them alike; each figure is the median over rounds of the
mean time of ``--calls`` calls. Also: fp32 and the default int8 at each ORT graph optimisation
level and at 1 thread, accuracy on the test split, and the node types ORT actually runs after
its graph optimisations (does QDQ become QLinearConv, how many Quantize/DequantizeLinear stay).

Nothing here is part of the pipeline; it calls the same ``shrinkflow.compress.quantize`` functions
the
quantize stage does.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from shrinkflow.compress.quantize import (
    quantize_onnx_dynamic,
    quantize_onnx_static,
    select_calibration,
)
from shrinkflow.data.prepared import load_prepared
from shrinkflow.measure.metrics import accuracy
from shrinkflow.model_files.export_onnx import export_onnx
from shrinkflow.model_files.open import open_model

LEVELS = {"basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
          "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
          "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}

# name: keyword arguments of quantize_onnx_static ("dynamic" = quantize_onnx_dynamic)
VARIANTS: dict[str, dict] = {
    "qdq u8/s8 pc rr (default)": {},
    "qdq u8/s8 pc": {"reduce_range": False},
    "qdq u8/s8 pt rr": {"per_channel": False},
    "qdq u8/s8 pt": {"per_channel": False, "reduce_range": False},
    "qdq s8/s8 pc rr": {"activation_type": "s8"},
    "qdq u8/u8 pt": {"weight_type": "u8", "per_channel": False, "reduce_range": False},
    "qoperator u8/s8 pc rr": {"quant_format": "qoperator"},
    "qoperator u8/s8 pt": {"quant_format": "qoperator", "per_channel": False,
                           "reduce_range": False},
    "qoperator s8/s8 pc rr": {"quant_format": "qoperator", "activation_type": "s8"},
    "dynamic u8 pc rr": "dynamic",
}


def session(path: Path, threads: int, level: str = "all",
            optimized: Path | None = None) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = LEVELS[level]
    options.log_severity_level = 3
    if optimized is not None:
        options.optimized_model_filepath = str(optimized)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def node_counts(path: Path) -> Counter:
    return Counter(n.op_type for n in onnx.load(str(path)).graph.node)


def summary(ops: Counter) -> str:
    """Every node type ORT runs after its graph optimisations, with counts (``Transpose`` nodes
    are the NCHW <-> NHWC layout changes ORT adds around its int8 convolutions)."""
    return " ".join(f"{k}:{v}" for k, v in sorted(ops.items()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("data")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--calls", type=int, default=20)
    ap.add_argument("--calibration", type=int, default=256)
    ap.add_argument("--workdir", default="")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="sf-int8-variants-"))
    work.mkdir(parents=True, exist_ok=True)

    data = load_prepared(args.data)
    shape = tuple(data.meta["shape"])
    model = open_model(args.model, shape, data.meta["num_classes"]).module
    fp32 = work / "fp32.onnx"
    export_onnx(model, shape, fp32)
    calibration = select_calibration(data.train[0], args.calibration, 0)
    files = {"fp32": fp32}
    for name, kwargs in VARIANTS.items():
        path = work / (name.split(" (")[0].replace(" ", "_").replace("/", "") + ".onnx")
        if kwargs == "dynamic":
            quantize_onnx_dynamic(fp32, path)
        else:
            quantize_onnx_static(fp32, path, calibration, **kwargs)
        files[name] = path

    # sessions: every variant at level "all" and --threads; fp32 and the default also at the
    # other optimisation levels and at 1 thread
    runs: dict[str, tuple[ort.InferenceSession, Path]] = {}
    for name, path in files.items():
        optimized = work / f"{path.stem}.optimized.onnx"
        runs[name] = (session(path, args.threads, optimized=optimized), optimized)
    default = "qdq u8/s8 pc rr (default)"
    for name in ("fp32", default):
        for level in ("basic", "extended"):
            runs[f"{name} [{level}]"] = (session(files[name], args.threads, level), files[name])
        runs[f"{name} [1 thread]"] = (session(files[name], 1), files[name])

    x_test, y_test = data.test
    batch = np.ascontiguousarray(x_test[: args.batch].float().div(255).numpy())
    times: dict[str, list[float]] = {name: [] for name in runs}
    for sess, _ in runs.values():  # warm-up
        for _ in range(5):
            sess.run(None, {"input": batch})
    for _ in range(args.rounds):
        for name, (sess, _) in runs.items():
            start = time.perf_counter()
            for _ in range(args.calls):
                sess.run(None, {"input": batch})
            times[name].append((time.perf_counter() - start) * 1000 / args.calls)

    fp32_ms = statistics.median(times["fp32"])
    x = np.ascontiguousarray(x_test.float().div(255).numpy())
    print(f"\n{args.model}: batch {args.batch}, {args.threads} thread(s), median of "
          f"{args.rounds} rounds x {args.calls} calls; speed = fp32 ms / variant ms\n")
    print("| variant | ms | speed vs fp32 | test acc | bytes | nodes ORT runs |")
    print("|---|---:|---:|---:|---:|---|")
    for name, (sess, optimized) in runs.items():
        ms = statistics.median(times[name])
        logits = torch.from_numpy(np.concatenate(
            [sess.run(None, {"input": x[i : i + 1000]})[0] for i in range(0, len(x), 1000)]))
        base = name.split(" [")[0]
        size = files[base].stat().st_size
        ops = summary(node_counts(optimized)) if optimized.exists() and optimized != files[
            base] else ""
        print(f"| {name} | {ms:.3f} | {fp32_ms / ms:.2f}x | {accuracy(logits, y_test):.2%} | "
              f"{size:,} | {ops} |")


if __name__ == "__main__":
    main()
