"""Choosing the one deployable model: the fastest candidate within an accuracy budget.

The pipeline makes several compressed forms of the student (distilled, pruned, fp32 ONNX, int8
ONNX, int8 PyTorch). Which of them ships is decided by measurements, not by position in the
pipeline: int8 is not always faster (a pruned 25k-parameter CNN at 28x28 ran 1.3-1.5x slower in
ORT int8 than in ORT fp32, measured), so "the last model" is not a rule.

The rule: among the candidates whose accuracy drop against the teacher (against the teacher
ensemble when ``teacher.ensemble_seeds`` adds members) is within ``max_drop_points`` (and whose
file is within ``max_file_bytes`` when that is set), take the one with the lowest median latency
at the chosen batch size; ties go to the more accurate, then the smaller file. Picking by
latency among those within budget guarantees the winner is never slower than a candidate it
beat on accuracy: a faster and more accurate candidate would also be within budget and would
have won. Named ``selection`` because a module called ``select`` would shadow the standard
library's ``select`` (which subprocess and asyncio import).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from shrinkflow.core.errors import ShrinkflowError
from shrinkflow.core.metric_keys import TEACHER, ModelEntry, model_key, reference_accuracy_key
from shrinkflow.data.images import CARD_NAMES as RESIZE_CARD_NAMES
from shrinkflow.model_files.card import make_card

EPS = 1e-9  # a drop equal to the budget passes (figures are rounded to 6 digits upstream)


@dataclass(frozen=True)
class Candidate:
    """One model that could ship, with the figures the choice is made on."""

    name: str
    file: str
    runtime: str
    precision: str
    accuracy: float  # fraction, on the test split
    drop_points: float  # (teacher - model) x 100; positive = worse than the teacher
    file_bytes: int
    p50_ms: float  # median latency at the selection batch size
    speedup_same_runtime: float | None  # vs the teacher's form in the same runtime
    speedup_vs_teacher: float | None  # vs the PyTorch teacher (runtime's gain included)


@dataclass(frozen=True)
class Selection:
    """The outcome: the winner, the runner-up (None when only one passed), and what was seen."""

    final: Candidate
    runner_up: Candidate | None
    passed: int  # candidates within budget
    considered: int  # candidates with both an accuracy and a latency
    reason: str


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


def build_candidates(
    models: Iterable[ModelEntry],
    metrics: Mapping[str, Any],
    bench_rows: Iterable[Mapping[str, Any]],
    batch_size: int,
    exclude: Iterable[str] = (),
) -> tuple[list[Candidate], list[str]]:
    """Candidates from the pipeline's figures; returns (candidates, notes on models left out).

    ``metrics`` holds the evaluate keys (``<model>_acc``; a benchmark-only model takes the
    accuracy of the model it shares weights with, ``accuracy_of``), ``bench_rows`` are the rows
    of metrics/benchmark.csv (latency, runtime, file size, speed-ups per model and batch size).
    The teacher and its exports are never candidates (they are the reference), nor the models
    in ``exclude``.
    """
    # the teacher's accuracy, or the ensemble's when there is one (metric_keys)
    reference = reference_accuracy_key(metrics)
    teacher_acc = _number(metrics.get(reference))
    if teacher_acc is None:
        raise ShrinkflowError(f"no teacher accuracy ({reference} in "
                              f"metrics/eval_{TEACHER}.json): run evaluate@{TEACHER} first")
    rows = {str(r["model"]): r for r in bench_rows
            if _number(r.get("batch_size")) == batch_size}
    skipped = set(exclude)
    candidates, notes = [], []
    for m in models:
        if m.accuracy_of == TEACHER or m.name in skipped:
            continue
        acc = _number(metrics.get(model_key(m.accuracy_of, "acc")))
        row = rows.get(m.name)
        p50 = _number(row.get("p50_ms")) if row else None
        if acc is None or p50 is None:
            missing = "accuracy" if acc is None else f"latency at batch {batch_size}"
            notes.append(f"{m.name}: no {missing}, not a candidate")
            continue
        candidates.append(Candidate(
            name=m.name, file=m.file, runtime=str(row.get("runtime", "?")),
            precision=str(row.get("precision", "?")), accuracy=acc,
            drop_points=round((teacher_acc - acc) * 100, 4),
            file_bytes=int(_number(row.get("file_bytes")) or 0), p50_ms=p50,
            speedup_same_runtime=_number(row.get("speedup_vs_teacher_same_runtime")),
            speedup_vs_teacher=_number(row.get("speedup_vs_teacher")),
        ))
    return candidates, notes


def within_budget(c: Candidate, max_drop_points: float, max_file_bytes: int = 0) -> bool:
    """Accuracy drop within the budget, and file size within the limit (0 = no limit)."""
    return c.drop_points <= max_drop_points + EPS and (
        max_file_bytes <= 0 or c.file_bytes <= max_file_bytes)


def choose(
    candidates: list[Candidate], max_drop_points: float, max_file_bytes: int = 0,
    batch_size: int | None = None,
) -> Selection:
    """The fastest candidate within budget (see the module docstring for the rule).

    Raises ShrinkflowError, one line, when none passes: it names the closest candidate (the
    smallest accuracy drop) so the user knows how far the budget is from reach.
    """
    if not candidates:
        raise ShrinkflowError("select: no candidate model has both an accuracy and a latency "
                              "(have evaluate and benchmark run?)")
    limit = f" and file <= {max_file_bytes:,} bytes" if max_file_bytes > 0 else ""
    passing = sorted((c for c in candidates if within_budget(c, max_drop_points, max_file_bytes)),
                     key=lambda c: (c.p50_ms, -c.accuracy, c.file_bytes, c.name))
    if not passing:
        closest = min(candidates, key=lambda c: (c.drop_points, c.p50_ms))
        size = (f", {closest.file_bytes:,} bytes" if max_file_bytes > 0 else "")
        raise ShrinkflowError(
            f"select: no model within {max_drop_points:g} points of the teacher{limit}; the "
            f"closest is {closest.name} (drop {closest.drop_points:.2f} points{size}): raise "
            "select.max_drop_points or improve the compression; models/final/ was left as it was"
        )
    final = passing[0]
    runner_up = passing[1] if len(passing) > 1 else None
    at = f" at batch {batch_size}" if batch_size is not None else ""
    reason = (f"fastest{at} ({final.p50_ms:.4g} ms) of {len(passing)}/{len(candidates)} "
              f"candidates within {max_drop_points:g} points of the teacher{limit}")
    if runner_up is not None:
        reason += f"; runner-up {runner_up.name} ({runner_up.p50_ms:.4g} ms)"
    return Selection(final, runner_up, len(passing), len(candidates), reason)


def final_metrics(
    s: Selection, final_file: str, file_format: str, batch_size: int, max_drop_points: float,
    teacher_file_bytes: int | None,
) -> dict[str, Any]:
    """metrics/final.json: flat ``final_*`` keys, so ``dvc exp show`` shows the choice per
    experiment (which model, its accuracy, drop, size, latency, speed-ups, the runner-up)."""
    f, r = s.final, s.runner_up
    ratio = (round(teacher_file_bytes / f.file_bytes, 2)
             if teacher_file_bytes and f.file_bytes else None)
    return {
        "final_model": f.name,
        "final_file": final_file,
        "final_format": file_format,
        "final_runtime": f"{f.runtime} {f.precision}",
        "final_acc": round(f.accuracy, 6),
        "final_drop_points": round(f.drop_points, 4),
        "final_max_drop_points": max_drop_points,
        "final_file_bytes": f.file_bytes,
        "final_smaller_than_teacher": ratio,  # teacher's fp32 file bytes / final's
        "final_batch_size": batch_size,
        "final_p50_ms": f.p50_ms,
        "final_speedup_vs_teacher_same_runtime": f.speedup_same_runtime,
        "final_speedup_vs_teacher": f.speedup_vs_teacher,
        "final_reason": s.reason,
        "final_runner_up": r.name if r else None,
        "final_runner_up_p50_ms": r.p50_ms if r else None,
        "final_runner_up_drop_points": round(r.drop_points, 4) if r else None,
    }


def _int(value: Any) -> int | None:
    number = _number(value)
    return int(number) if number is not None else None


def final_card(
    final: Candidate, models: Iterable[ModelEntry], metrics: Mapping[str, Any],
    bench_rows: Iterable[Mapping[str, Any]], data_meta: Mapping[str, Any], file_format: str,
    pipeline: Mapping[str, Any],
) -> dict[str, Any]:
    """The shipped model's card (``shrinkflow.card.make_card``) from the figures the choice was
    made on: classes, shape and mean/std from the data's meta.json, accuracy and drop from
    evaluate, latency at every benchmarked batch size, params and MACs from metrics/benchmark.csv.
    ``pipeline`` is ``card.pipeline_commit(...)``."""
    entry = next(m for m in models if m.name == final.name)
    mine = sorted((r for r in bench_rows if r.get("model") == final.name),
                  key=lambda r: _number(r.get("batch_size")) or 0)
    first = mine[0] if mine else {}
    return make_card(
        model=final.name, made_from=final.file, file_format=file_format, runtime=final.runtime,
        precision=final.precision, classes=data_meta["classes"], input_shape=data_meta["shape"],
        mean=data_meta["mean"], std=data_meta["std"], accuracy=final.accuracy,
        teacher_accuracy=_number(metrics.get(model_key(TEACHER, "acc"))),
        drop_points=final.drop_points,
        test_images=_int(metrics.get(model_key(entry.accuracy_of, "test_images"))),
        data={"data_source": data_meta.get("source"),
              "data_sha256": data_meta.get("source_sha256")},
        latency={"runtime": f"{final.runtime} {final.precision}", "device": first.get("device"),
                 "threads": _int(first.get("threads")), "cpu": first.get("cpu"),
                 "p50_ms": [{"batch_size": _int(r.get("batch_size")),
                             "ms": _number(r.get("p50_ms"))} for r in mine]},
        size={"params": _int(first.get("params")), "macs": _int(first.get("macs"))},
        pipeline=pipeline, resize=RESIZE_CARD_NAMES[data_meta.get("resize", "squash")],
    )
