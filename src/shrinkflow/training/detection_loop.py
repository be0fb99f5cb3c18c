"""Detection's training loop: the classification loop's recipe (``TrainConfig``: optimizer,
learning-rate schedule, seed, ``max_batches``, the non-finite-loss guard, live progress) over
the prepared boxes (``data.prepared_boxes``), validated by COCO mAP after each epoch.

A loss is any callable ``loss(model, images, targets) -> (loss, parts)``: ``fcos_loss`` trains
on the labels (torchvision's FCOS computes its focal, GIoU and centre-ness losses itself); a
distillation loss (``compress.detection_distill.DetectionKD``) also runs the teacher. Images
go in as torchvision's detectors take them, a list of float ``(C, H, W)`` tensors in [0, 1].

CPU and one process: ``nproc`` above 1 and augmentation are refused in one line (their
classification versions move labels, not boxes).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from shrinkflow.core.errors import ShrinkflowError
from shrinkflow.data.prepared_boxes import BoxSplit, load_box_split
from shrinkflow.measure.detection_metrics import detection_metrics
from shrinkflow.nets.detectors import build_detector, detector_spec
from shrinkflow.nets.zoo import build_model, count_params
from shrinkflow.params.common import TrainConfig
from shrinkflow.training.loop import (
    NonFiniteLossGuard,
    lr_factor,
    make_optimizer,
    nonfinite_message,
    seed_everything,
)

Targets = list[dict[str, torch.Tensor]]
DetectionLoss = Callable[[nn.Module, list[torch.Tensor], Targets],
                         tuple[torch.Tensor, dict[str, torch.Tensor]]]
GRAD_CLIP = 10.0  # FCOS's first steps on a fresh head spike; the probe clipped at 10 too
EVAL_BATCH = 50


def fcos_loss(model: nn.Module, images: list[torch.Tensor], targets: Targets
              ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The detector's own training losses, summed: plain supervised detection."""
    parts = model(images, targets)
    return sum(parts.values()), {k: v.detach() for k, v in parts.items()}


def batch_of(split: BoxSplit, rows: Any) -> tuple[list[torch.Tensor], Targets]:
    """Images ``rows`` of ``split`` as the detector takes them, with their targets."""
    images = [torch.from_numpy(split.image(i)) for i in rows]
    targets = []
    for i in rows:
        boxes, labels = split.target(int(i))
        targets.append({"boxes": torch.from_numpy(np.asarray(boxes, np.float32)),
                        "labels": torch.from_numpy(np.asarray(labels, np.int64))})
    return images, targets


def predict_boxes(model: nn.Module, split: BoxSplit
                  ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per image of ``split``: the detector's boxes, scores and class indices."""
    was_training = model.training
    model.eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(split), EVAL_BATCH):
            images, _ = batch_of(split, range(start, min(start + EVAL_BATCH, len(split))))
            out += [(o["boxes"].numpy(), o["scores"].numpy(), o["labels"].numpy())
                    for o in model(images)]
    model.train(was_training)
    return out


def split_map(model: nn.Module, split: BoxSplit, classes: list[str]) -> dict[str, Any]:
    """COCO mAP of ``model`` on ``split`` (``measure.detection_metrics``)."""
    return detection_metrics(predict_boxes(model, split), split.truths(), classes)


def check_detection_recipe(cfg: TrainConfig, params_key: str) -> None:
    """What detection's loop does not do yet, refused before any work."""
    if cfg.nproc != 1:
        raise ShrinkflowError(f"{params_key}.nproc = {cfg.nproc}: detection trains in one "
                              "process; expected 1")
    if cfg.augment != "none":
        raise ShrinkflowError(f"{params_key}.augment = {cfg.augment!r}: detection has no "
                              "augmentation that moves its boxes yet; expected none")


def fit_detector(model: nn.Module, train: BoxSplit, val: BoxSplit, classes: list[str],
                 cfg: TrainConfig, loss_fn: DetectionLoss = fcos_loss, name: str = "train",
                 params_key: str = "train", loss_params: dict[str, Any] | None = None,
                 log: Callable[[str], None] = print,
                 on_epoch: Callable[[dict[str, Any]], None] | None = None
                 ) -> list[dict[str, Any]]:
    """Train ``model`` in place for ``cfg.epochs``; one history row per epoch (train loss and
    its parts, val mAP and mAP@.5, the learning rate). ``loss_params``: the loss's own params
    by key, named if the loss turns inf or NaN (as ``training.loop.fit``)."""
    check_detection_recipe(cfg, params_key)
    optimizer = make_optimizer(list(model.parameters()), cfg)
    steps_per_epoch = math.ceil(len(train) / cfg.batch_size)
    if cfg.max_batches:
        steps_per_epoch = min(steps_per_epoch, cfg.max_batches)
    total, step = cfg.epochs * steps_per_epoch, 0
    guard = NonFiniteLossGuard(torch.device("cpu"), steps_per_epoch,
                               nonfinite_message(name, cfg, params_key, loss_params))
    rng = np.random.default_rng(cfg.seed)
    history: list[dict[str, Any]] = []
    for epoch in range(1, cfg.epochs + 1):
        start, sums, seen = time.perf_counter(), {}, 0
        model.train()
        order = rng.permutation(len(train))
        lr = cfg.lr
        for k in range(steps_per_epoch):
            rows = order[k * cfg.batch_size:(k + 1) * cfg.batch_size]
            lr = cfg.lr * lr_factor(cfg, step, total)
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss, parts = loss_fn(model, *batch_of(train, rows))
            guard.update(loss, step)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
            optimizer.step()
            step += 1
            for key, value in {"loss": loss.detach(), **parts}.items():
                sums[key] = sums.get(key, 0.0) + float(value) * len(rows)
            seen += len(rows)
        guard.check()
        val_map = split_map(model, val, classes)
        row = {"epoch": epoch, **{f"train_{k}": round(v / max(seen, 1), 6) for k, v in
                                  sums.items()},
               "val_map": val_map["map"], "val_map_50": val_map["map_50"], "lr": round(lr, 8)}
        history.append(row)
        log(f"[{name}] epoch {epoch:>3}/{cfg.epochs}  loss {row['train_loss']:.4f}  "
            f"val mAP {row['val_map']:.3f}  mAP@.5 {row['val_map_50']:.3f}  lr {lr:.4g}  "
            f"({time.perf_counter() - start:.1f}s)")
        if on_epoch is not None:
            on_epoch(row)
    return history


def train_detector(model_params: Any, cfg: TrainConfig, data_dir: str, name: str,
                   params_key: str = "train", model_key: str = "model",
                   on_epoch: Callable[[dict[str, Any]], None] | None = None,
                   loss_fn: DetectionLoss = fcos_loss, loss_params: dict[str, Any] | None = None,
                   init: Callable[[nn.Module, dict[str, Any]], None] | None = None
                   ) -> tuple[nn.Module, dict[str, Any], list[dict[str, Any]], dict[str, Any]]:
    """Seed, build and train an FCOS detector on the prepared boxes in ``data_dir``; returns
    (model, spec, history rows, ``<name>_*`` metrics): the detection twin of
    ``training.loop.train_supervised``. ``params_key`` and ``model_key``: where ``cfg`` and
    ``model_params`` live in params.yaml, for errors. The scratch control and the distilled
    student call it with the same student and recipe, so they differ only in ``loss_fn``.
    ``init(classifier, spec)``, when given, loads a user's weights into the classifier whose
    trunk becomes the backbone (``teacher.init``), as ``train_supervised``'s does."""
    train, meta = load_box_split(data_dir, "train")
    val, _ = load_box_split(data_dir, "val")
    test, _ = load_box_split(data_dir, "test")
    spec = detector_spec(model_params, meta, model_key)
    seed_everything(cfg.seed)
    classifier = build_model(spec)
    if init is not None:
        init(classifier, spec)
    model = build_detector(spec, classifier, model_key)
    start = time.perf_counter()
    history = fit_detector(model, train, val, meta["classes"], cfg, loss_fn, name, params_key,
                           loss_params, on_epoch=on_epoch)
    seconds = time.perf_counter() - start
    return model, spec, history, detector_metrics(model, test, meta["classes"], name, history,
                                                   seconds)


def detector_metrics(model: nn.Module, test: BoxSplit, classes: list[str], name: str,
                     history: list[dict[str, Any]], seconds: float) -> dict[str, Any]:
    """``<name>_*`` metrics of a detector: size, val mAP (last epoch), test mAP, mAP@.5, the AP
    of each class, training time."""
    m = split_map(model, test, classes)
    return {
        f"{name}_params": count_params(model),
        f"{name}_val_map": history[-1]["val_map"] if history else None,
        f"{name}_test_map": m["map"],
        f"{name}_test_map_50": m["map_50"],
        f"{name}_test_ap_per_class": m["ap_per_class"],
        f"{name}_train_seconds": round(seconds, 2),
    }
