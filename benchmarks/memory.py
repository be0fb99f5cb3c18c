"""Peak memory of `prepare` and of a training stage on synthetic data (a benchmark, not a test).

    python benchmarks/memory.py [--n 50000] [--size 64] [--workdir /tmp/sf-memory]
    python benchmarks/memory.py --n 20000 --size 224 --photos --prepare-only   # photo sizes

``--photos`` writes JPEGs of 4:3 and 3:4 shapes at 1.5x ``size`` (smooth random colour fields)
and prepares them with ``prepare.resize: crop`` (docs/models.md).

Writes an image folder of ``n`` random RGB PNGs (``size`` x ``size``, 10 classes, with
``train/`` and ``test/`` folders) once, then runs the real stage scripts in a scratch project and
reads each process's peak RSS (``ru_maxrss`` of the child, i.e. what ``/usr/bin/time -v``
reports). It prints the prepared data's size, each stage's peak and the ratio
``(peak - baseline) / prepared size`` that issue 10 bounds at 1.5, for two baselines:

* imports only: a process that imports what a stage imports (torch's CUDA build alone is
  ~650 MB here);
* the same stage on a tiny dataset of the same image size (600 images): the framework plus the
  model, its optimiser and a batch's activations, i.e. everything that does not grow with the
  data. This is the fair baseline for a training stage.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
CLASSES = 10


def _photo(rng: np.random.Generator, size: int, index: int) -> Image.Image:
    """A smooth random colour field, landscape or portrait, 1.5x ``size`` on its short side."""
    short, long = size * 3 // 2, size * 2
    coarse = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    im = Image.fromarray(coarse).resize((long, short), Image.Resampling.BILINEAR)
    return im.transpose(Image.Transpose.ROTATE_90) if index % 2 else im


def write_folder(root: Path, n: int, size: int, seed: int = 0, photos: bool = False) -> None:
    """n random RGB PNGs (or JPEG photos); 1 in 6 goes to test/ (50,000 -> ~41,700 train +
    ~8,300 test)."""
    if (root / "done").is_file():
        return
    shutil.rmtree(root, ignore_errors=True)
    rng = np.random.default_rng(seed)
    start = time.perf_counter()
    for i in range(n):
        split = "test" if i % 6 == 5 else "train"
        folder = root / split / f"c{i % CLASSES}"
        folder.mkdir(parents=True, exist_ok=True)
        if photos:
            _photo(rng, size, i).save(folder / f"{i:06d}.jpg", quality=85)
        else:
            pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"{i:06d}.png", compress_level=1)
        if (i + 1) % 10000 == 0:
            print(f"  wrote {i + 1:,} images ({time.perf_counter() - start:.0f}s)", flush=True)
    (root / "done").write_text("ok\n")


def peak_rss_mb(cmd: list[str], cwd: Path) -> tuple[float, float]:
    """Run ``cmd`` in a fresh wrapper process; returns (peak RSS of cmd in MB, seconds)."""
    probe = (
        "import resource, subprocess, sys, time\n"
        "t = time.perf_counter()\n"
        "r = subprocess.run(sys.argv[1:])\n"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, time.perf_counter() - t)\n"
        "sys.exit(r.returncode)\n"
    )
    out = subprocess.run([sys.executable, "-c", probe, *cmd], cwd=cwd, check=True,
                         stdout=subprocess.PIPE, text=True)
    kb, seconds = out.stdout.strip().splitlines()[-1].split()
    return int(kb) / 1024, float(seconds)


def make_project(path: Path, images: Path, size: int, resize: str = "squash") -> None:
    shutil.rmtree(path, ignore_errors=True)
    shutil.copytree(ROOT / "stages", path / "stages")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["prepare"].update(source="imagefolder", path=str(images), split="source",
                             image_size=size, channels=3, val_fraction=0.1, resize=resize)
    params["teacher"]["model"].update(arch="cnn", widths=[8, 16], depth=1)
    params["teacher"]["train"].update(epochs=1, batch_size=256)
    (path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def run_stages(workdir: Path, n: int, size: int, photos: bool = False,
               prepare_only: bool = False) -> dict[str, float]:
    """prepare + train_teacher on ``n`` synthetic images; peak RSS (MB), seconds, data MB."""
    images = workdir / f"images-{n}-{size}{'-photos' if photos else ''}"
    print(f"[memory] image folder {images}", flush=True)
    write_folder(images, n, size, photos=photos)
    project = workdir / f"project-{n}"
    make_project(project, images, size, "crop" if photos else "squash")
    prepare, prepare_s = peak_rss_mb([sys.executable, "stages/prepare.py"], project)
    prepared = project / "data" / "prepared"
    train, train_s = (0.0, 0.0) if prepare_only else peak_rss_mb(
        [sys.executable, "stages/train_teacher.py"], project)
    counts = json.loads((prepared / "meta.json").read_text())["counts"]
    print(f"[memory] {n:,} images: {counts}", flush=True)
    return {"prepare": prepare, "prepare_s": prepare_s, "train": train, "train_s": train_s,
            "data_mb": sum(f.stat().st_size for f in prepared.iterdir()) / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=50_000)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/sf-memory"))
    parser.add_argument("--photos", action="store_true", help="JPEG photos, resize: crop")
    parser.add_argument("--prepare-only", action="store_true", help="skip train_teacher")
    args = parser.parse_args()

    imports, _ = peak_rss_mb([sys.executable, "-c", "import shrinkflow.training.loop, "
                              "shrinkflow.data.prepared, "
                              "shrinkflow.core.outputs, shrinkflow.model_files.user_weights"], ROOT)
    tiny = run_stages(args.workdir, 600, args.size, args.photos, args.prepare_only)
    big = run_stages(args.workdir, args.n, args.size, args.photos, args.prepare_only)
    size_mb = big["data_mb"]
    print(f"[memory] prepared data: {size_mb:,.0f} MB (3x{args.size}x{args.size} uint8); "
          f"imports-only baseline {imports:,.0f} MB")
    stages = [("prepare", "prepare")] + ([] if args.prepare_only else
                                         [("train", "train_teacher, 1 epoch")])
    for stage, label in stages:
        peak = big[stage]
        print(f"[memory] {label}: peak RSS {peak:,.0f} MB in {big[stage + '_s']:.0f}s; "
              f"same stage on 600 images {tiny[stage]:,.0f} MB")
        for name, base in [("imports only", imports), ("600-image run", tiny[stage])]:
            print(f"[memory]   (peak - {name}) / data = {(peak - base) / size_mb:.2f} "
                  "(target <= 1.5)")


if __name__ == "__main__":
    main()
