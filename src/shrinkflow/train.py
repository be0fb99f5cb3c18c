"""The one training loop. Teacher training, the scratch control, distillation and pruning
fine-tunes all call ``fit``; they differ only in the loss they pass in.

A loss is any callable ``loss(logits, targets, inputs) -> (loss, parts)`` where ``parts`` maps a
name to a detached scalar tensor logged per epoch (e.g. ``{"kd": ..., "ce": ...}``). If the loss is
an ``nn.Module`` with parameters (a feature adapter), they are trained with the model.

The loop keeps no global state and only logs from rank 0, so it runs unchanged under
``torchrun``: each rank takes a disjoint shard of every epoch's shuffled indices. Wrapping the
model in DistributedDataParallel is the caller's choice.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from shrinkflow.params import TrainConfig

LossParts = dict[str, torch.Tensor]
LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, LossParts]]
Split = tuple[torch.Tensor, torch.Tensor]  # (uint8 images N,C,H,W ; int64 labels N)


class CrossEntropy(nn.Module):
    """Plain supervised loss in the loop's loss signature."""

    def __init__(self, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.label_smoothing = label_smoothing

    def forward(
        self, logits: torch.Tensor, targets: torch.Tensor, inputs: torch.Tensor
    ) -> tuple[torch.Tensor, LossParts]:
        loss = F.cross_entropy(logits, targets, label_smoothing=self.label_smoothing)
        return loss, {"ce": loss.detach()}


def seed_everything(seed: int) -> None:
    """Seed every RNG a run touches and ask torch for deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was asked for but torch.cuda.is_available() is False")
    return torch.device(name)


def rank_and_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def is_main_process() -> bool:
    return rank_and_world()[0] == 0


def to_input(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 images -> float in [0, 1] on ``device`` (channels_last on CUDA, where convs gain)."""
    x = x.to(device, non_blocking=True).float().div_(255)
    if device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def iterate_batches(
    split: Split,
    batch_size: int,
    device: torch.device,
    generator: torch.Generator | None = None,
    max_batches: int = 0,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches from in-memory tensors: shuffled when a generator is given, sharded by rank.

    Small image datasets fit in memory (and on a GPU), so this beats a per-sample DataLoader.
    """
    x, y = split
    n = len(y)
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    rank, world = rank_and_world()
    order = order[rank::world]
    for i, start in enumerate(range(0, len(order), batch_size)):
        if max_batches and i >= max_batches:
            break
        idx = order[start : start + batch_size]
        yield to_input(x[idx], device), y[idx].to(device, non_blocking=True)


def _autocast(device: torch.device):
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")


@torch.no_grad()
def predict(
    model: nn.Module, x: torch.Tensor, batch_size: int = 256, device: torch.device | None = None
) -> torch.Tensor:
    """Logits (float32, on CPU) for uint8 images ``x``, in eval mode."""
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, len(x), batch_size):
        with _autocast(device):
            out.append(model(to_input(x[start : start + batch_size], device)).float().cpu())
    model.train(was_training)
    return torch.cat(out) if out else torch.empty(0)


def _make_optimizer(params: list[nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=True
        )
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def _lr_factor(cfg: TrainConfig, step: int, total: int) -> float:
    if cfg.schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * step / max(total, 1)))
    if cfg.schedule == "step":  # x0.1 at 50% and 75% of training
        return 0.1 ** sum(step >= total * f for f in (0.5, 0.75))
    return 1.0


def fit(
    model: nn.Module,
    train: Split,
    val: Split,
    cfg: TrainConfig,
    loss_fn: LossFn | None = None,
    log: Callable[[str], None] = print,
    name: str = "train",
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Train ``model`` in place for ``cfg.epochs``; returns one history row per epoch.

    Rows hold train loss/accuracy (and each loss part), val loss/accuracy and the learning rate.
    ``on_epoch(row)`` (rank 0 only) sees each row as soon as its epoch ends: live progress.
    """
    device = resolve_device(cfg.device)
    model.to(device)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    loss_fn = loss_fn if loss_fn is not None else CrossEntropy(cfg.label_smoothing)
    params = list(model.parameters())
    if isinstance(loss_fn, nn.Module):
        loss_fn.to(device)
        params += [p for p in loss_fn.parameters() if p.requires_grad]
    optimizer = _make_optimizer(params, cfg)
    generator = torch.Generator().manual_seed(cfg.seed)
    n_batches = math.ceil(len(train[1]) / rank_and_world()[1] / cfg.batch_size)
    steps_per_epoch = min(n_batches, cfg.max_batches) if cfg.max_batches else n_batches
    total_steps, step = cfg.epochs * steps_per_epoch, 0
    history: list[dict[str, Any]] = []
    for epoch in range(1, cfg.epochs + 1):
        start = time.perf_counter()
        model.train()
        sums: dict[str, torch.Tensor] = {}
        seen = correct = 0
        lr = cfg.lr
        for xb, yb in iterate_batches(train, cfg.batch_size, device, generator, cfg.max_batches):
            lr = cfg.lr * _lr_factor(cfg, step, total_steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            with _autocast(device):
                logits = model(xb)
                loss, parts = loss_fn(logits.float(), yb, xb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            for key, value in {"loss": loss.detach(), **parts}.items():
                sums[key] = sums.get(key, 0) + value.float() * len(yb)
            correct += int((logits.argmax(1) == yb).sum())
            seen += len(yb)
        val_logits = predict(model, val[0], device=device)
        row: dict[str, Any] = {"epoch": epoch}
        row.update({f"train_{k}": round(float(v) / max(seen, 1), 6) for k, v in sums.items()})
        row["train_acc"] = round(correct / max(seen, 1), 6)
        row["val_loss"] = round(float(F.cross_entropy(val_logits, val[1])), 6)
        row["val_acc"] = round(float((val_logits.argmax(1) == val[1]).float().mean()), 6)
        row["lr"] = round(lr, 8)
        history.append(row)
        if is_main_process():
            log(
                f"[{name}] epoch {epoch:>3}/{cfg.epochs}  loss {row['train_loss']:.4f}  "
                f"train_acc {row['train_acc']:.2%}  val_loss {row['val_loss']:.4f}  "
                f"val_acc {row['val_acc']:.2%}  lr {lr:.4g}  ({time.perf_counter() - start:.1f}s)"
            )
            if on_epoch is not None:
                on_epoch(row)
    return history


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float((logits.argmax(1) == labels).float().mean()) if len(labels) else 0.0


def train_supervised(
    model_params: Any, cfg: TrainConfig, data: Any, name: str,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> tuple[nn.Module, dict[str, Any], list[dict[str, Any]], dict[str, Any]]:
    """Seed, build and train a model with plain cross-entropy; summarise it as flat metrics.

    Shared by the teacher and the scratch control, which must differ only in what they train.
    ``model_params`` is a ``ModelSpec`` section, ``data`` a ``shrinkflow.data.Prepared``.
    Seeding happens right before building, so the same student spec and seed give the same
    initial weights in every stage. Returns (model, spec, history rows, ``<name>_*`` metrics).
    """
    from shrinkflow.models import build_model, count_macs, count_params, make_spec

    meta = data.meta
    spec = make_spec(model_params, meta["shape"][0], meta["num_classes"], meta["mean"], meta["std"])
    seed_everything(cfg.seed)
    model = build_model(spec)
    start = time.perf_counter()
    history = fit(model, data.train, data.val, cfg, name=name, on_epoch=on_epoch)
    seconds = time.perf_counter() - start
    metrics = {
        f"{name}_params": count_params(model),
        f"{name}_macs": count_macs(model, tuple(meta["shape"])),
        f"{name}_val_acc": history[-1]["val_acc"] if history else None,
        f"{name}_test_acc": round(accuracy(predict(model, data.test[0]), data.test[1]), 6),
        f"{name}_train_seconds": round(seconds, 2),
    }
    return model, spec, history, metrics


def summary_line(name: str, spec: dict[str, Any], metrics: dict[str, Any]) -> str:
    """One closing line for a training stage, from its ``<name>_*`` metrics."""
    return (
        f"[{name}] {spec['arch']} {metrics[f'{name}_params']:,} params, "
        f"{metrics[f'{name}_macs']:,} MACs: test acc {metrics[f'{name}_test_acc']:.2%} "
        f"in {metrics[f'{name}_train_seconds']:.1f}s"
    )
