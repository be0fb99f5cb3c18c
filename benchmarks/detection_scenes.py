"""Can a small detector learn the built-in digit scenes on 2 CPU cores, and what does
distillation buy a smaller one? (docs/research.md, "Detection feasibility"; issue 27, before
detection is in the pipeline.)

    python benchmarks/detection_scenes.py [--train 1200] [--test 200] [--epochs 6]
        [--T 2] [--alpha 0.5] [--mnist data/raw/mnist]

With ``--mnist`` (IDX files, ``../shared/data/get-mnist.sh``), the scenes are 96 px with 1-4
MNIST digits of 28 px: training scenes from MNIST's training digits, test scenes from its test
digits (a held-apart set).

Trains ``nets.detectors.build_fcos`` detectors with SGD on ``data.digit_scenes`` scenes (64 px,
1-4 digits of 16 px each): the teacher (the zoo cnn's stages [16, 32, 64] x2), then a student
([8, 16, 32] x1) from scratch and, with the same seed, distilled from the teacher
(``compress.detection_distill``, ``--T``, ``--alpha``). Prints per epoch the training loss, COCO mAP
on held-apart scenes (``measure.detection_metrics``) and the seconds. A probe, not the product's
loop: detection's training stage will use the pipeline's own.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from shrinkflow.compress.detection_distill import DetectionKD
from shrinkflow.data.digit_scenes import make_digit_scenes
from shrinkflow.data.sources import load_idx_source
from shrinkflow.measure.detection_metrics import detection_metrics
from shrinkflow.nets.detectors import build_fcos


def as_inputs(images: np.ndarray, split, idx) -> tuple[list, list]:
    x = [torch.from_numpy(images[i]).float() / 255 for i in idx]
    t = [{"boxes": torch.from_numpy(split.images[i].boxes),
          "labels": torch.from_numpy(split.images[i].labels)} for i in idx]
    return x, t


def evaluate(model, images: np.ndarray, split) -> dict:
    model.eval()
    with torch.no_grad():
        outputs = [o for k in range(0, len(images), 50)
                   for o in model(as_inputs(images, split, range(k, min(k + 50, len(images))))[0])]
    return detection_metrics([(o["boxes"].numpy(), o["scores"].numpy(), o["labels"].numpy())
                              for o in outputs], split.images, split.classes)


def train(name: str, widths: list[int], depth: int, data: tuple, epochs: int,
          teacher=None, T: float = 2.0, alpha: float = 0.5):
    (train_x, train), (test_x, test) = data
    torch.manual_seed(0)
    model = build_fcos(1, 10, widths, depth, train_x.shape[-1], [0.1], [0.25])
    kd = DetectionKD(teacher, T=T, alpha=alpha) if teacher is not None else None
    print(f"{name}: FCOS {widths} x{depth}, {sum(p.numel() for p in model.parameters()):,} "
          "params")
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    for epoch in range(1, epochs + 1):
        start, total = time.perf_counter(), 0.0
        model.train()
        order = np.random.default_rng(epoch).permutation(len(train_x))
        for k in range(0, len(train_x), 32):
            x, t = as_inputs(train_x, train, order[k:k + 32])
            loss = kd(model, x, t)[0] if kd else sum(model(x, t).values())
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
            opt.step()
            total += loss.item()
        seconds = time.perf_counter() - start
        m = evaluate(model, test_x, test)
        print(f"  epoch {epoch}: loss {total:.2f}  mAP {m['map']:.3f}  mAP@.5 {m['map_50']:.3f}"
              f"  train {seconds:.1f} s", flush=True)
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=1200)
    parser.add_argument("--test", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--T", type=float, default=2.0)
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--mnist", type=Path, default=None)
    args = parser.parse_args()
    if args.mnist is None:
        data = (make_digit_scenes(args.train, canvas=64, seed=0),
                make_digit_scenes(args.test, canvas=64, seed=1))
    else:
        mnist = load_idx_source(args.mnist)  # parts: train, test
        data = (make_digit_scenes(args.train, canvas=96, scale=1, seed=0, source=mnist, part=0),
                make_digit_scenes(args.test, canvas=96, scale=1, seed=1, source=mnist, part=1))
    print(f"{args.train} training scenes, {args.test} test scenes, "
          f"{torch.get_num_threads()} threads")
    teacher = train("teacher", [16, 32, 64], 2, data, args.epochs)
    train("student, from scratch", [8, 16, 32], 1, data, args.epochs)
    train(f"student, distilled (T {args.T:g}, alpha {args.alpha:g})", [8, 16, 32], 1, data,
          args.epochs, teacher=teacher, T=args.T, alpha=args.alpha)


if __name__ == "__main__":
    main()
