"""Choosing the one deployable model: the fastest candidate within an accuracy budget.

The pipeline makes several compressed forms of the student (distilled, pruned, fp32 ONNX, int8
ONNX, int8 PyTorch). Which of them ships is decided by measurements, not by position in the
pipeline: int8 is not always faster (a pruned 25k-parameter CNN at 28x28 ran 1.3-1.5x slower in
ORT int8 than in ORT fp32, measured), so "the last model" is not a rule.

The rule: among the candidates whose accuracy drop against the teacher (against the teacher
ensemble when ``teacher.ensemble_seeds`` adds members) is within ``max_drop_points`` (and whose
file is within ``max_file_bytes`` when that is set), take the one with the lowest median latency
at the chosen batch size. Candidates whose latency ties the fastest's (``noise.tie``: inside the
95 % interval over the benchmark's rounds) are equally fast as far as the measurement can tell:
among them the more accurate wins, then the smaller file. Picking by latency among those within
budget guarantees the winner is never clearly slower than a candidate it beat on accuracy: a
clearly faster and at least as accurate candidate would also be within budget and would have won.

On detection data the same rule runs on the test mAP (``metric_keys.task_score``): "accuracy"
below is the task's headline score, evaluate's ``<model>_map``, and the budget is in mAP points
(100 x the mAP difference). mAP has no binomial interval (it is not a fraction of test images
right), so a detector's figures carry none: ``Candidate.accuracy_estimate`` is None and the
``_low`` / ``_high`` fields are null rather than a made-up interval.

When no candidate is within budget the choice is "none": the stage still writes its outputs
(``status`` says so) so that the report can show the candidates against the budget; the report
stage then ends the pipeline with a non-zero exit.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from shrinkflow.core.errors import ShrinkflowError
from shrinkflow.core.metric_keys import (
    ACCURACY,
    KD_GAIN,
    TEACHER,
    TEST_IMAGES,
    ModelEntry,
    Score,
    final_key,
    model_key,
    reference_accuracy_key,
    score_field,
)
from shrinkflow.data.images import CARD_NAMES as RESIZE_CARD_NAMES
from shrinkflow.measure.noise import Estimate, accuracy_estimate, tie, within_budget
from shrinkflow.model_files.card import make_card

NONE = "none"  # final_model when no candidate is within budget



@dataclass(frozen=True)
class Candidate:
    """One model that could ship, with the figures the choice is made on."""

    name: str
    file: str
    runtime: str
    precision: str
    accuracy: float  # fraction, on the test split: the task's score (``score``), mAP on detection
    drop_points: float  # (teacher - model) x 100; positive = worse than the teacher
    file_bytes: int
    p50_ms: float  # median latency at the selection batch size
    speedup_same_runtime: float | None  # vs the teacher's form in the same runtime
    speedup_vs_teacher: float | None  # vs the PyTorch teacher (runtime's gain included)
    test_images: int = 0  # the accuracy's test-set size (0: unknown, no interval)
    p50_low_ms: float | None = None  # 95 % interval of the median over the rounds
    p50_high_ms: float | None = None
    speedup_low: float | None = None  # ... and of the same-runtime speed-up
    speedup_high: float | None = None
    score: Score = ACCURACY  # what ``accuracy`` measures (its field, name, kind of interval)

    def accuracy_estimate(self) -> Estimate | None:
        """The score with its 95 % interval; None for a score that has no binomial one (mAP)."""
        if not self.score.binomial:
            return None
        if self.test_images <= 0:
            return Estimate(self.accuracy, self.accuracy, self.accuracy)
        return accuracy_estimate(self.accuracy, self.test_images)

    def latency_estimate(self) -> Estimate:
        low = self.p50_ms if self.p50_low_ms is None else self.p50_low_ms
        high = self.p50_ms if self.p50_high_ms is None else self.p50_high_ms
        return Estimate(self.p50_ms, low, high)


@dataclass(frozen=True)
class Selection:
    """The outcome: the winner (None: nothing within budget), the runner-up (None when only one
    passed), the candidates whose latency ties the winner's, and what was seen."""

    final: Candidate | None
    runner_up: Candidate | None
    passed: int  # candidates within budget
    considered: int  # candidates with both an accuracy and a latency
    reason: str
    candidates: tuple[Candidate, ...] = ()
    tied: tuple[str, ...] = ()  # within budget, latency a tie with the winner's
    closest: Candidate | None = None  # nothing within budget: the smallest drop


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
    score: Score = ACCURACY,
) -> tuple[list[Candidate], list[str]]:
    """Candidates from the pipeline's figures; returns (candidates, notes on models left out).

    ``metrics`` holds the evaluate keys (``<model>_acc``; a benchmark-only model takes the
    accuracy of the model it shares weights with, ``accuracy_of``), ``bench_rows`` are the rows
    of metrics/benchmark.csv (latency, runtime, file size, speed-ups per model and batch size).
    The teacher and its exports are never candidates (they are the reference), nor the models
    in ``exclude``. ``score`` is the task's (``metric_keys.task_score``): on detection data
    the keys read are ``<model>_map`` and drops are in mAP points.
    """
    # the teacher's accuracy, or the ensemble's when there is one (metric_keys)
    reference = reference_accuracy_key(metrics, score)
    teacher_acc = _number(metrics.get(reference))
    if teacher_acc is None:
        raise ShrinkflowError(f"no teacher {score.name} ({reference} in "
                              f"metrics/eval_{TEACHER}.json): run evaluate@{TEACHER} first")
    rows = {str(r["model"]): r for r in bench_rows
            if _number(r.get("batch_size")) == batch_size}
    skipped = set(exclude)
    candidates, notes = [], []
    for m in models:
        if m.accuracy_of == TEACHER or m.name in skipped:
            continue
        acc = _number(metrics.get(model_key(m.accuracy_of, score.field)))
        row = rows.get(m.name)
        p50 = _number(row.get("p50_ms")) if row else None
        if acc is None or p50 is None:
            missing = score.name if acc is None else f"latency at batch {batch_size}"
            notes.append(f"{m.name}: no {missing}, not a candidate")
            continue
        candidates.append(Candidate(
            name=m.name, file=m.file, runtime=str(row.get("runtime", "?")),
            precision=str(row.get("precision", "?")), accuracy=acc,
            drop_points=round((teacher_acc - acc) * 100, 4),
            file_bytes=int(_number(row.get("file_bytes")) or 0), p50_ms=p50,
            speedup_same_runtime=_number(row.get("speedup_vs_teacher_same_runtime")),
            speedup_vs_teacher=_number(row.get("speedup_vs_teacher")),
            test_images=int(_number(metrics.get(model_key(m.accuracy_of, "test_images"))) or 0),
            p50_low_ms=_number(row.get("p50_low_ms")), p50_high_ms=_number(row.get("p50_high_ms")),
            speedup_low=_number(row.get("speedup_vs_teacher_same_runtime_low")),
            speedup_high=_number(row.get("speedup_vs_teacher_same_runtime_high")),
            score=score,
        ))
    return candidates, notes


def candidate_passes(c: Candidate, max_drop_points: float, max_file_bytes: int = 0) -> bool:
    """Accuracy drop within the budget, and file size within the limit (0 = no limit)."""
    return bool(within_budget(c.drop_points, max_drop_points)) and (
        max_file_bytes <= 0 or c.file_bytes <= max_file_bytes)


def choose(
    candidates: list[Candidate], max_drop_points: float, max_file_bytes: int = 0,
    batch_size: int | None = None,
) -> Selection:
    """The fastest candidate within budget (see the module docstring for the rule, ties
    included); ``final`` is None when no candidate is within budget, and ``reason`` then names
    the closest (the smallest accuracy drop) so the user knows how far the budget is from reach.
    """
    if not candidates:
        raise ShrinkflowError("select: no candidate model has both an accuracy and a latency "
                              "(have evaluate and benchmark run?)")
    limit = f" and file <= {max_file_bytes:,} bytes" if max_file_bytes > 0 else ""
    passing = sorted(
        (c for c in candidates if candidate_passes(c, max_drop_points, max_file_bytes)),
        key=lambda c: (c.p50_ms, -c.accuracy, c.file_bytes, c.name))
    if not passing:
        closest = min(candidates, key=lambda c: (c.drop_points, c.p50_ms))
        size = (f", {closest.file_bytes:,} bytes" if max_file_bytes > 0 else "")
        reason = (f"no model within {max_drop_points:g} points of the teacher{limit}; the "
                  f"closest is {closest.name} (drop {closest.drop_points:.2f} points{size})")
        return Selection(None, None, 0, len(candidates), reason, tuple(candidates),
                         closest=closest)
    fastest = passing[0].latency_estimate()
    tied = [c for c in passing if tie(c.latency_estimate(), fastest)]
    final = min(tied, key=lambda c: (-c.accuracy, c.file_bytes, c.p50_ms, c.name))
    rest = [c for c in passing if c is not final]
    runner_up = rest[0] if rest else None
    at = f" at batch {batch_size}" if batch_size is not None else ""
    reason = (f"fastest{at} ({final.p50_ms:.4g} ms) of {len(passing)}/{len(candidates)} "
              f"candidates within {max_drop_points:g} points of the teacher{limit}")
    others = [c.name for c in tied if c is not final]
    if others:
        reason += (f"; latency a tie (inside the noise) with {', '.join(others)}: the more "
                   "accurate, then the smaller file wins")
    if runner_up is not None:
        reason += f"; runner-up {runner_up.name} ({runner_up.p50_ms:.4g} ms)"
    return Selection(final, runner_up, len(passing), len(candidates), reason, tuple(candidates),
                     tuple(others))


def final_metrics(
    s: Selection, models: Iterable[ModelEntry], metrics: Mapping[str, Any],
    score: Score = ACCURACY,
) -> dict[str, Any]:
    """metrics/final.json, the pipeline's only DVC metrics besides live progress: what
    ``dvc exp show`` compares across experiments. Each evaluated model's test accuracy, the
    test-set size, the distillation gain, and the shipped model's accuracy (with its 95 %
    interval), drop, file size and same-runtime speed-up (with its interval over the rounds).
    Everything else (latencies, the reason, the runner-up, every candidate) is in
    metrics/selection.json and the report. Keys are unique across the project's metrics files.
    On detection data (``score``: mAP) the score's keys are ``<model>_map`` and ``final_map``,
    the KD gain is in mAP points, and ``final_map_low`` / ``_high`` are null: no interval."""
    out: dict[str, Any] = {}
    for m in models:
        if m.evaluated:
            acc = _number(metrics.get(model_key(m.name, score.field)))
            out[model_key(m.name, score.field)] = None if acc is None else round(acc, 6)
    out[TEST_IMAGES] = _int(metrics.get(model_key(TEACHER, "test_images")))
    student = _number(metrics.get(model_key("student", score.field)))
    scratch = _number(metrics.get(model_key("student_scratch", score.field)))
    out[KD_GAIN] = (round((student - scratch) * 100, 4)
                             if student is not None and scratch is not None else None)
    f = s.final
    acc = f.accuracy_estimate() if f else None
    figures = {
        "model": f.name if f else NONE,
        "within_budget": f is not None,
        "acc": round(f.accuracy, 6) if f else None,
        "acc_low": round(acc.low, 6) if acc else None,
        "acc_high": round(acc.high, 6) if acc else None,
        "drop_points": round(f.drop_points, 4) if f else None,
        "file_bytes": f.file_bytes if f else None,
        "speedup": f.speedup_same_runtime if f else None,
        "speedup_low": f.speedup_low if f else None,
        "speedup_high": f.speedup_high if f else None,
    }
    out.update({final_key(field, score): value for field, value in figures.items()})
    return out


def selection_record(
    s: Selection, final_file: str | None, batch_size: int, max_drop_points: float,
    max_file_bytes: int, teacher_accuracy: float, score: Score = ACCURACY,
) -> dict[str, Any]:
    """metrics/selection.json (a plain output, not a DVC metric): the whole decision, for the
    report and for people: status, reason, budget, every candidate with its figures and
    intervals and whether it passed, the runner-up and the latency ties. The score's fields are
    named after ``score`` (``map``, ``map_low``, ``teacher_map`` on detection data; the
    interval null there)."""
    def figures(c: Candidate) -> dict[str, Any]:
        acc = c.accuracy_estimate()
        named = {"acc": round(c.accuracy, 6), "acc_low": round(acc.low, 6) if acc else None,
                 "acc_high": round(acc.high, 6) if acc else None}
        return {"model": c.name, "file": c.file, "runtime": f"{c.runtime} {c.precision}",
                **{score_field(k, score): v for k, v in named.items()},
                "test_images": c.test_images,
                "drop_points": round(c.drop_points, 4), "file_bytes": c.file_bytes,
                "p50_ms": c.p50_ms, "p50_low_ms": c.p50_low_ms, "p50_high_ms": c.p50_high_ms,
                "speedup": c.speedup_same_runtime, "speedup_low": c.speedup_low,
                "speedup_high": c.speedup_high, "speedup_vs_teacher": c.speedup_vs_teacher,
                "within_budget": candidate_passes(c, max_drop_points, max_file_bytes)}

    return {
        "status": "selected" if s.final else "none_within_budget",
        "final_model": s.final.name if s.final else NONE,
        "final_file": final_file,
        "reason": s.reason,
        "max_drop_points": max_drop_points,
        "max_file_bytes": max_file_bytes,
        "batch_size": batch_size,
        model_key(TEACHER, score.field): teacher_accuracy,
        "runner_up": s.runner_up.name if s.runner_up else None,
        "tied": list(s.tied),
        "closest": s.closest.name if s.closest else None,
        "candidates": [figures(c) for c in s.candidates],
    }


def _int(value: Any) -> int | None:
    number = _number(value)
    return int(number) if number is not None else None


def final_card(
    final: Candidate, models: Iterable[ModelEntry], metrics: Mapping[str, Any],
    bench_rows: Iterable[Mapping[str, Any]], data_meta: Mapping[str, Any], file_format: str,
    pipeline: Mapping[str, Any], score: Score = ACCURACY,
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
        teacher_accuracy=_number(metrics.get(model_key(TEACHER, score.field))),
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
        score_field=score.field,
    )
