"""The student ladder on MNIST (docs/compression.md, "A ladder of students", "Measured"): the
`28x28-gray-cpu` overlay with its ladder, a 0.3-point budget, the whole pipeline on the CPU.

    python benchmarks/ladder_mnist.py [--workdir /tmp/sf-ladder] [--budget 0.3]
        [--rung w2=2,4,8 ...]   # more rungs besides the overlay's (name=widths)

Copies the project into a scratch git repo, brings MNIST with ../shared/data/get-mnist.sh
(offline here), applies the overlay, sets the budget, runs `dvc repro` and prints per rung (and
for the main chain's models): test accuracy, drop, params, same-runtime latency, the shipped
model, and each stage's time. A benchmark, not a test: the data stays out of git and CI.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from pipeline_repo import copy_project, deep_update  # noqa: E402

from shrinkflow.cli.config import apply_overlay  # noqa: E402


def make_project(work: Path, budget: float, rungs: dict[str, list[int]]) -> None:
    shutil.rmtree(work, ignore_errors=True)
    copy_project(work)
    subprocess.run(["bash", str(ROOT.parent / "shared/data/get-mnist.sh"),
                    str(work / "data/raw/mnist")], check=True, stdout=subprocess.DEVNULL)
    apply_overlay(ROOT / "configs/28x28-gray-cpu.yaml", work / "params.yaml")
    params = yaml.safe_load((work / "params.yaml").read_text())
    extra = {name: {"widths": widths} for name, widths in rungs.items()}
    params = deep_update(params, {"budget": {"max_drop_points": budget},
                                  "ladder": {"rungs": {**extra, **params["ladder"]["rungs"]}}})
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for cmd in (["git", "init", "-q", "-b", "main"], ["git", "add", "-A"],
                ["git", "commit", "-q", "-m", "ladder"]):
        subprocess.run(cmd, cwd=work, check=True)


def stage_seconds(log: str, times: list[float]) -> dict[str, float]:
    """Seconds per stage from the timestamped `dvc repro` lines."""
    starts = [(t, m.group(1)) for t, line in zip(times, log.splitlines(), strict=True)
              if (m := re.search(r"Running stage '([^']+)'", line))]
    ends = [t for t, _ in starts[1:]] + [times[-1]]
    return {name: round(end - t, 1) for (t, name), end in zip(starts, ends, strict=True)}


def summary(work: Path) -> list[dict]:
    final = json.loads((work / "metrics/final.json").read_text())
    selection = json.loads((work / "metrics/selection.json").read_text())
    with open(work / "metrics/benchmark.csv", newline="") as fh:
        rows = {(r["model"], r["batch_size"]): r for r in csv.DictReader(fh)}
    batch = str(selection["batch_size"])
    out = []
    for c in selection["candidates"]:
        row = rows.get((c["model"], batch), {})
        out.append({"model": c["model"], "acc": c["acc"], "drop_points": c["drop_points"],
                    "params": int(row.get("params") or 0), f"b{batch}_p50_ms": c["p50_ms"],
                    "speedup_same_runtime": c["speedup"], "within": c["within_budget"],
                    "shipped": c["model"] == final["final_model"]})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/sf-ladder"))
    parser.add_argument("--budget", type=float, default=0.3)
    parser.add_argument("--rung", action="append", default=[], metavar="NAME=W1,W2,...",
                        help="one more rung, listed before the overlay's (repeatable)")
    args = parser.parse_args()
    rungs = {name: [int(w) for w in widths.split(",")]
             for name, widths in (r.split("=", 1) for r in args.rung)}
    make_project(args.workdir, args.budget, rungs)
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "PYTHONPATH": str(args.workdir / "src")}
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "dvc", "repro"], cwd=args.workdir, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines, times = [], []
    for line in proc.stdout:
        print(line, end="", flush=True)
        lines.append(line.rstrip("\n"))
        times.append(time.perf_counter())
    proc.wait()
    seconds = round(time.perf_counter() - start)
    print(json.dumps({"seconds": seconds, "exit": proc.returncode,
                      "stages": stage_seconds("\n".join(lines), times),
                      "candidates": summary(args.workdir)}, indent=2))


if __name__ == "__main__":
    main()
