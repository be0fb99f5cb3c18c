"""Distil one student: build it from its spec, train it with distill's loss and recipe.

Shared by the distill stage (``distill.student``) and the ladder's rungs (``distill_rung@NAME``,
``distill.student`` with a rung's keys changed), so every candidate student is trained by the
same steps in the same order and differs only in its architecture.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from shrinkflow.compress.distill import FeatureKDLoss, build_loss
from shrinkflow.compress.teacher_ensemble import check_teacher_fits_data, load_teacher
from shrinkflow.data.prepared import Prepared
from shrinkflow.nets.zoo import build_model, make_spec
from shrinkflow.params.common import ModelSpec
from shrinkflow.params.distill import DistillParams
from shrinkflow.training.live import live_progress
from shrinkflow.training.loop import check_input_size, fit, seed_everything


@dataclass
class Distilled:
    student: nn.Module
    spec: dict[str, Any]  # what the model file records (nets.zoo.make_spec)
    history: list[dict[str, Any]]  # one row per epoch
    seconds: float


def load_fitting_teacher(teachers: list[str], T: float, meta: dict[str, Any]) -> nn.Module:
    """The member itself for one teacher file, else their ensemble at ``T``; each file
    role-checked (not a student copied over it) and checked to fit the data's shape and classes."""
    teacher, payloads = load_teacher(teachers, T)
    for path, payload in zip(teachers, payloads, strict=True):
        check_teacher_fits_data(payload["spec"], meta, path)
    return teacher


def distill_student(p: DistillParams, student: ModelSpec, input_size: int, input_size_key: str,
                    teacher: nn.Module, data: Prepared, name: str,
                    live_dir: str | Path,
                    stop: Callable[[list[dict[str, Any]]], str | None] | None = None
                    ) -> Distilled:
    """Seeded as train_student_scratch seeds its student (seed, then build), so a student and
    its scratch control differ only in the loss. ``input_size_key`` names the key an input size
    larger than the images came from; ``stop`` may end training early (``training.loop.fit``)."""
    meta = data.meta
    check_input_size(input_size, meta["shape"], input_size_key)
    # the resize is part of the student: the teacher (and every later stage) sees full-size images
    spec = make_spec(student, meta["shape"][0], meta["num_classes"], meta["mean"], meta["std"],
                     input_size, meta["shape"][1:])
    seed_everything(p.train.seed)
    model = build_model(spec)
    loss_fn = build_loss(p, teacher, model, data.input_shape)
    print(f"[{name}] method {p.method}, T {p.T}, alpha {p.alpha}"
          + (f", feature_weight {p.feature_weight}" if p.method != "kd" else ""))
    start = time.perf_counter()
    loss_params = {"distill.T": p.T, "distill.alpha": p.alpha}
    if p.method != "kd":
        loss_params["distill.feature_weight"] = p.feature_weight
    with live_progress(live_dir, name) as on_epoch:
        history = fit(model, data.train, data.val, p.train, loss_fn=loss_fn, name=name,
                      params_key="distill.train", loss_params=loss_params, on_epoch=on_epoch,
                      stop=stop)
    seconds = time.perf_counter() - start
    if isinstance(loss_fn, FeatureKDLoss):
        loss_fn.remove_hooks()
    return Distilled(model, spec, history, seconds)
