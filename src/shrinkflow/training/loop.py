"""The one training loop. Teacher training, the scratch control, distillation and pruning
fine-tunes all call ``fit``; they differ only in the loss they pass in.

A loss is any callable ``loss(logits, targets, inputs) -> (loss, parts)`` where ``parts`` maps a
name to a detached scalar tensor logged per epoch (e.g. ``{"kd": ..., "ce": ...}``). If the loss is
an ``nn.Module`` with parameters (a feature adapter), they are trained with the model.

The loop keeps no global state and only logs from rank 0, so it runs unchanged under
``torchrun`` (see ``shrinkflow.training.distributed``): the model trains inside
DistributedDataParallel,
each global batch is split evenly over the ranks, and the logged metrics are sums over all ranks.
``train.batch_size`` is the global batch, so N processes take the same optimiser steps as one;
only batch-norm statistics (per rank) and float summation order differ.

On CUDA, a split that fits in a quarter of the free GPU memory is copied there once and batches
are gathered on the GPU; metrics stay on the device until the end of the epoch, so a step has
no host synchronisation.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from shrinkflow.core.errors import ShrinkflowError
from shrinkflow.data.augment import Augment, make_augment
from shrinkflow.measure.metrics import accuracy
from shrinkflow.nets.zoo import build_model, count_macs, count_params, make_spec
from shrinkflow.params.common import TrainConfig
from shrinkflow.training.distributed import (
    all_reduce_sum,
    average_buffers,
    average_gradients,
    broadcast_from_main,
    is_main_process,
    rank_and_world,
    wrap_ddp,
)

LossParts = dict[str, torch.Tensor]
LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, LossParts]]
Split = tuple[torch.Tensor, torch.Tensor]  # (uint8 images N,C,H,W ; int64 labels N)
RESIDENT_FRACTION = 0.25  # of free GPU memory a split may take to be copied there whole


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


def resolve_device(name: str, key: str = "device") -> torch.device:
    """``auto`` -> cuda when visible; ``cuda`` without a GPU is an error naming ``key``. CUDA
    comes with its index: this process's GPU (``shrinkflow.training.distributed`` sets it per rank).

    params.py already refuses ``cuda`` at load time; this catches callers that built a config
    by hand (and a GPU that disappeared between loading params and training).
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ShrinkflowError(
            f"{key} = 'cuda': no CUDA GPU is visible (torch.cuda.is_available() is False)"
        )
    if name == "cuda":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device(name)


def to_input(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 images -> float in [0, 1] on ``device`` (channels_last on CUDA, where convs gain)."""
    x = x.to(device, non_blocking=True).float().div_(255)
    if device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def _to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Host -> GPU copies from pinned memory, so they do not block the host; else a plain move."""
    if device.type == "cuda" and t.device.type == "cpu":
        t = t.pin_memory()
    return t.to(device, non_blocking=True)


def iterate_batches(
    split: Split,
    batch_size: int,
    device: torch.device,
    generator: torch.Generator | None = None,
    max_batches: int = 0,
    augment: Augment | None = None,
    rank: int = 0,
    world: int = 1,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches gathered from (memory-mapped) tensors: shuffled when a generator is given,
    augmented as uint8 on ``device`` when ``augment`` is given.

    ``batch_size`` is the global batch; with ``world`` > 1 process, ``rank`` takes every
    ``world``-th image of each global batch, so the ranks' batches together are exactly the
    one-process batches. The epoch is padded by wrapping round (as DistributedSampler does) to
    a multiple of ``world``, so every rank gets the same number and sizes of batches: a rank
    with one batch fewer would leave the others waiting in DDP's all-reduce for ever.

    Gathering a batch of indices reads only those images, so this beats a per-sample
    DataLoader for small images, keeps memory near the prepared data's size, and each rank reads
    only its own images. Data already on the GPU is gathered there.
    """
    x, y = split
    n = len(y)
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    if n % world:
        order = torch.cat([order, order[: world - n % world]])
    order = order.to(x.device)  # one index copy per epoch when the split lives on the GPU
    for i, start in enumerate(range(0, len(order), batch_size)):
        if max_batches and i >= max_batches:
            break
        idx = order[start : start + batch_size][rank::world]
        xb = _to_device(x[idx], device)
        if augment is not None:
            xb = augment(xb)
        yield to_input(xb, device), _to_device(y[idx], device)


def keep_on_device(split: Split, device: torch.device) -> Split:
    """The whole split on a CUDA ``device`` when it takes under ``RESIDENT_FRACTION`` of the free
    memory there (CIFAR-10's 150 MB does), so no step waits on the host; otherwise unchanged,
    and batches are read from the (memory-mapped) host split one at a time."""
    x, y = split
    if device.type != "cuda" or x.device == device:
        return split
    free, _total = torch.cuda.mem_get_info(device)
    if x.nbytes + y.nbytes > RESIDENT_FRACTION * free:
        return split
    return x.to(device), y.to(device)


@torch.no_grad()
def evaluate_loss_acc(
    model: nn.Module, split: Split, device: torch.device, batch_size: int = 256
) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` on ``split``, in eval mode.

    Each rank scores every ``world``-th image and the sums are all-reduced, so every rank gets
    the same figures for the whole split at 1/world of the cost (the ranks must hold the same
    model: see ``shrinkflow.training.distributed.average_buffers``).
    """
    rank, world = rank_and_world()
    x, y = split
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.float64, device=device)
    shard = torch.arange(rank, len(y), world, device=x.device)
    for start in range(0, len(shard), batch_size):
        idx = shard[start : start + batch_size]
        yb = _to_device(y[idx], device)
        with _autocast(device):
            logits = model(to_input(_to_device(x[idx], device), device)).float()
        loss_sum += F.cross_entropy(logits, yb, reduction="sum")
        correct += (logits.argmax(1) == yb).sum()
    model.train(was_training)
    totals = torch.stack([loss_sum, correct, torch.tensor(float(len(shard)), device=device)])
    loss, right, count = all_reduce_sum(totals).tolist()
    return loss / max(count, 1), right / max(count, 1)


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


def make_optimizer(params: list[nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=True
        )
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


# How often fit reads the non-finite-loss flag on a GPU (on a CPU it checks every batch).
NONFINITE_CHECK_EVERY = 50


class NonFiniteLossGuard:
    """Stops training at the first batch whose loss is inf or NaN.

    Once the loss is NaN the weights are NaN after the next optimizer step and every later
    epoch only hides it (measured: ``distill.T: .inf`` gave NaN from epoch 1 and a saved
    10 %-accuracy student). Raising inside ``fit`` means the stage never reaches its writes.

    On a CPU, reading the loss costs nothing, so every batch is checked before its backward
    pass. On a GPU, reading a value forces a host sync; there the global step of the first bad
    batch is kept in a device tensor and read every ``NONFINITE_CHECK_EVERY`` steps and at the
    end of each epoch: the run stops at most that many steps late, still names the first bad
    batch, and still writes nothing.
    """

    def __init__(self, device: torch.device, steps_per_epoch: int, what: str) -> None:
        self.every = NONFINITE_CHECK_EVERY if device.type == "cuda" else 1
        self.steps_per_epoch = max(steps_per_epoch, 1)
        self.what = what  # "[name] ... most likely responsible: ..."
        self.first_bad = torch.full((), -1, dtype=torch.long, device=device)

    def update(self, loss: torch.Tensor, step: int) -> None:
        """Record ``step`` if its loss is the first non-finite one; check when it is time."""
        bad = ~torch.isfinite(loss.detach()) & (self.first_bad < 0)
        self.first_bad = torch.where(bad, step, self.first_bad)
        if (step + 1) % self.every == 0:
            self.check()

    def check(self) -> None:
        first = int(self.first_bad)
        if first >= 0:
            epoch, batch = divmod(first, self.steps_per_epoch)
            raise ShrinkflowError(self.what.format(epoch=epoch + 1, batch=batch + 1))


def nonfinite_message(
    name: str, cfg: TrainConfig, params_key: str, loss_params: Mapping[str, Any] | None
) -> str:
    """The guard's message, with ``{epoch}`` / ``{batch}`` left to fill in."""
    suspects = f"{params_key}.lr = {cfg.lr:g} (too high a learning rate diverges)"
    if cfg.lr * cfg.weight_decay >= 1:  # each step scales the weights by (1 - lr * wd)
        suspects += f" with {params_key}.weight_decay = {cfg.weight_decay:g}"
    if loss_params:
        suspects += ", or the loss's own params (" + ", ".join(
            f"{key} = {value}" for key, value in loss_params.items()) + ")"
    return (f"[{name}] the training loss is not finite (inf or NaN) at epoch {{epoch}}, batch "
            f"{{batch}}: training stopped and nothing was written. Most likely responsible: "
            f"{suspects}")


def lr_factor(cfg: TrainConfig, step: int, total: int) -> float:
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
    params_key: str = "train",
    loss_params: Mapping[str, Any] | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    stop: Callable[[list[dict[str, Any]]], str | None] | None = None,
) -> list[dict[str, Any]]:
    """Train ``model`` in place for ``cfg.epochs``; returns one history row per epoch.

    Rows hold train loss/accuracy (and each loss part), val loss/accuracy and the learning rate.
    ``params_key`` is where ``cfg`` lives in params.yaml (``distill.train``) and ``loss_params``
    the loss's own params with their keys (``{"distill.T": 4.0}``): a loss that turns inf or NaN
    raises a ShrinkflowError that names them (see ``NonFiniteLossGuard``).

    Under torchrun the model trains wrapped in DistributedDataParallel (trainable loss
    parameters, e.g. a hint adapter, have their gradients averaged alongside; a teacher inside
    the loss is frozen and stays unwrapped), and every rank returns the same rows.
    ``on_epoch(row)`` (rank 0 only) sees each row as soon as its epoch ends: live progress.
    ``stop(history)``, after each epoch, returns a reason to end training there, or None
    (``compress.early_stop``); every rank holds the same rows, so all ranks stop together.
    """
    rank, world = rank_and_world()
    if cfg.batch_size % world:
        raise ShrinkflowError(f"{params_key}.batch_size = {cfg.batch_size} must be divisible by "
                              f"the number of processes ({world}): the batch is split over them")
    device = resolve_device(cfg.device, f"{params_key}.device")
    model.to(device)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    train, val = keep_on_device(train, device), keep_on_device(val, device)
    net = wrap_ddp(model, device)  # trains; ``model`` itself is evaluated (same parameters)
    loss_fn = loss_fn if loss_fn is not None else CrossEntropy(cfg.label_smoothing)
    params = list(model.parameters())
    trained_in_loss: list[nn.Parameter] = []
    if isinstance(loss_fn, nn.Module):
        loss_fn.to(device)
        trained_in_loss = [p for p in loss_fn.parameters() if p.requires_grad]
        broadcast_from_main(p.data for p in trained_in_loss)
        params += trained_in_loss
    optimizer = make_optimizer(params, cfg)
    generator = torch.Generator().manual_seed(cfg.seed)  # the same order on every rank
    augment = make_augment(cfg.augment, cfg.crop_padding, cfg.seed + rank)
    n_batches = math.ceil((len(train[1]) + (-len(train[1])) % world) / cfg.batch_size)
    steps_per_epoch = min(n_batches, cfg.max_batches) if cfg.max_batches else n_batches
    total_steps, step = cfg.epochs * steps_per_epoch, 0
    guard = NonFiniteLossGuard(device, steps_per_epoch,
                               nonfinite_message(name, cfg, params_key, loss_params))
    history: list[dict[str, Any]] = []
    for epoch in range(1, cfg.epochs + 1):
        start = time.perf_counter()
        net.train()
        sums: dict[str, torch.Tensor] = {}
        correct = torch.zeros((), device=device)  # on the device: no host sync per step
        seen = 0
        lr = cfg.lr
        for xb, yb in iterate_batches(train, cfg.batch_size, device, generator, cfg.max_batches,
                                      augment, rank, world):
            lr = cfg.lr * lr_factor(cfg, step, total_steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            with _autocast(device):
                logits = net(xb)
                loss, parts = loss_fn(logits.float(), yb, xb)
            guard.update(loss, step)  # before backward: a NaN never reaches the weights on CPU
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            average_gradients(trained_in_loss)
            optimizer.step()
            step += 1
            for key, value in {"loss": loss.detach(), **parts}.items():
                sums[key] = sums.get(key, 0) + value.float() * len(yb)
            correct += (logits.argmax(1) == yb).sum()
            seen += len(yb)
        guard.check()
        # One host sync per epoch: every rank's sums in one all-reduce, then read back.
        totals = torch.stack([*sums.values(), correct, torch.tensor(float(seen), device=device)])
        *part_sums, correct_all, seen_all = all_reduce_sum(totals.double()).tolist()
        average_buffers(model)  # every rank now holds the model rank 0 saves
        val_loss, val_acc = evaluate_loss_acc(model, val, device)
        row: dict[str, Any] = {"epoch": epoch}
        row.update({f"train_{k}": round(v / max(seen_all, 1), 6)
                    for k, v in zip(sums, part_sums, strict=True)})
        row["train_acc"] = round(correct_all / max(seen_all, 1), 6)
        row["val_loss"] = round(val_loss, 6)
        row["val_acc"] = round(val_acc, 6)
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
        reason = stop(history) if stop is not None else None
        if reason:
            if is_main_process():
                log(f"[{name}] stopped after epoch {epoch}/{cfg.epochs}: {reason}")
            break
    return history


def train_supervised(
    model_params: Any,
    cfg: TrainConfig,
    data: Any,
    name: str,
    init: Callable[[nn.Module, dict[str, Any]], None] | None = None,
    params_key: str = "train",
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    input_size: int = 0,
) -> tuple[nn.Module, dict[str, Any], list[dict[str, Any]], dict[str, Any]]:
    """Seed, build and train a model with plain cross-entropy; summarise it as flat metrics.

    Shared by the teacher and the scratch control, which must differ only in what they train.
    ``model_params`` is a ``ModelSpec`` section, ``data`` a ``shrinkflow.data.Prepared``.
    Seeding happens right before building, so the same student spec and seed give the same
    initial weights in every stage. ``init(model, spec)``, when given, runs between building and
    training (fine-tuning from a user's weights). Returns (model, spec, history rows,
    ``<name>_*`` metrics). ``params_key`` is where ``cfg`` lives in params.yaml, for errors.
    ``input_size`` > 0 builds the model with its input downsampling (``nets.zoo.Resize``).
    """
    meta = data.meta
    spec = make_spec(model_params, meta["shape"][0], meta["num_classes"], meta["mean"], meta["std"],
                     input_size, meta["shape"][1:])
    seed_everything(cfg.seed)
    model = build_model(spec)
    if init is not None:
        init(model, spec)
    start = time.perf_counter()
    history = fit(model, data.train, data.val, cfg, name=name, params_key=params_key,
                  on_epoch=on_epoch)
    seconds = time.perf_counter() - start
    return model, spec, history, supervised_metrics(model, data, name, history, seconds)


def check_input_size(input_size: int, shape: list[int], key: str) -> None:
    """Fail before any work if a downsampling size would enlarge the images (C, H, W)."""
    if input_size > min(shape[1:]):
        raise ShrinkflowError(f"{key} = {input_size}: larger than the data's images "
                              f"({shape[1]}x{shape[2]}); expected at most {min(shape[1:])}, or "
                              "0 for the data's own size")


def effective_input_size(spec: dict[str, Any], shape: list[int]) -> str:
    """The image size the network itself sees, e.g. "16x16" (the data's when no resize)."""
    size = spec.get("input_size")
    return f"{size}x{size}" if size else f"{shape[1]}x{shape[2]}"


def supervised_metrics(
    model: nn.Module, data: Any, name: str, history: list[dict[str, Any]], seconds: float
) -> dict[str, Any]:
    """``<name>_*`` metrics of a classifier: size, cost, val / test accuracy, training time.

    With no history (an imported model, or 0 epochs) val accuracy is measured here.
    """
    val_acc = (history[-1]["val_acc"] if history
               else round(accuracy(predict(model, data.val[0]), data.val[1]), 6))
    return {
        f"{name}_params": count_params(model),
        f"{name}_macs": count_macs(model, tuple(data.meta["shape"])),
        f"{name}_val_acc": val_acc,
        f"{name}_test_acc": round(accuracy(predict(model, data.test[0]), data.test[1]), 6),
        f"{name}_train_seconds": round(seconds, 2),
    }


def summary_line(name: str, spec: dict[str, Any], metrics: dict[str, Any]) -> str:
    """One closing line for a training stage, from its ``<name>_*`` metrics."""
    return (
        f"[{name}] {spec['arch']} {metrics[f'{name}_params']:,} params, "
        f"{metrics[f'{name}_macs']:,} MACs: test acc {metrics[f'{name}_test_acc']:.2%} "
        f"in {metrics[f'{name}_train_seconds']:.1f}s"
    )
