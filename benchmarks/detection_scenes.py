"""Can a small detector learn the built-in digit scenes on 2 CPU cores? (docs/research.md,
"Detection feasibility"; issue 27, before detection is in the pipeline.)

    python benchmarks/detection_scenes.py [--train 1200] [--test 200] [--epochs 6]

Trains ``nets.detectors.build_fcos`` (the zoo cnn's stages [16, 32, 64] x2, stride 4) with SGD
on ``data.digit_scenes`` scenes (64 px, 1-4 digits of 16 px each), and prints per epoch the
training loss, COCO mAP on held-apart scenes (``measure.detection_metrics``) and the seconds.
A probe, not the product's loop: detection's training stage will use the pipeline's own.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from shrinkflow.data.digit_scenes import make_digit_scenes
from shrinkflow.measure.detection_metrics import detection_metrics
from shrinkflow.nets.detectors import build_fcos


def as_inputs(images: np.ndarray, split, idx) -> tuple[list, list]:
    x = [torch.from_numpy(images[i]).float() / 255 for i in idx]
    t = [{"boxes": torch.from_numpy(split.images[i].boxes),
          "labels": torch.from_numpy(split.images[i].labels)} for i in idx]
    return x, t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=1200)
    parser.add_argument("--test", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=6)
    args = parser.parse_args()
    torch.manual_seed(0)
    train_x, train = make_digit_scenes(args.train, canvas=64, seed=0)
    test_x, test = make_digit_scenes(args.test, canvas=64, seed=1)
    model = build_fcos(1, 10, [16, 32, 64], 2, 64, [0.1], [0.25])
    print(f"FCOS, {sum(p.numel() for p in model.parameters()):,} params; {args.train} training "
          f"scenes, {args.test} test scenes, {torch.get_num_threads()} threads")
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    for epoch in range(1, args.epochs + 1):
        start, total = time.perf_counter(), 0.0
        model.train()
        order = np.random.default_rng(epoch).permutation(args.train)
        for k in range(0, args.train, 32):
            x, t = as_inputs(train_x, train, order[k:k + 32])
            loss = sum(model(x, t).values())
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
            opt.step()
            total += loss.item()
        seconds = time.perf_counter() - start
        model.eval()
        with torch.no_grad():
            outputs = [o for k in range(0, args.test, 50)
                       for o in model(as_inputs(test_x, test, range(k, min(k + 50, args.test)))[0])]
        m = detection_metrics([(o["boxes"].numpy(), o["scores"].numpy(), o["labels"].numpy())
                               for o in outputs], test.images, test.classes)
        print(f"epoch {epoch}: loss {total:.2f}  mAP {m['map']:.3f}  mAP@.5 {m['map_50']:.3f}  "
              f"train {seconds:.1f} s")


if __name__ == "__main__":
    main()
