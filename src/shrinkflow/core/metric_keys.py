"""The metrics contract: which models the pipeline has, and how their metric keys are named.

The model list lives in ``models.yaml`` at the project root. dvc.yaml loads it as ``vars`` (the
evaluate stage is ``foreach: ${models}``), and the benchmark and report stages and the tests read
it through ``read_model_list``: adding a model there adds its evaluate item, its benchmark and
its report row.

Key scheme (flat keys, unique across metrics files, so ``dvc exp show`` columns read well):

* ``<model>_<field>``: one model's figures, e.g. ``quantized_acc`` in ``eval_quantized.json``
  (``model_key``);
* ``bench_<model>_b<N>_<field>``: the benchmark's headline figures at batch size N, ``p50_ms``
  (median latency), ``speedup_vs_teacher_same_runtime`` (against the teacher's form in the same
  runtime: compression's gain alone) and, for the teacher's exports, ``speedup_vs_teacher`` (the
  runtime's gain) (``bench_key`` / ``parse_bench_key``). Everything else the benchmark measures
  is a column of ``metrics/benchmark.csv``.

Build and parse keys only through these functions: report and compare read what evaluate and
benchmark write, and a key spelled by hand in one place silently becomes a missing column.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from shrinkflow.core.errors import ShrinkflowError

TEACHER = "teacher"  # every speed-up and accuracy drop is measured against this model ...
# ... or, with extra ensemble members (teacher.ensemble_seeds), accuracy drops against the
# ensemble's test accuracy (metrics/teacher_ensemble.json, absent or {} for one teacher)
ENSEMBLE_ACC = "teacher_ensemble_test_acc"
BENCH_FIELDS = ("p50_ms", "speedup_vs_teacher", "speedup_vs_teacher_same_runtime")
_NAME = re.compile(r"[A-Za-z0-9_]+")
_BENCH_KEY = re.compile(
    rf"bench_(?P<model>[A-Za-z0-9_]+?)_b(?P<batch>\d+)_(?P<field>{'|'.join(BENCH_FIELDS)})"
)


def model_key(model: str, field: str) -> str:
    """``<model>_<field>``, e.g. ``model_key("pruned", "acc") == "pruned_acc"``."""
    return f"{model}_{field}"


def bench_key(model: str, batch_size: int, field: str) -> str:
    """``bench_<model>_b<N>_<field>`` for a field of ``BENCH_FIELDS``."""
    if field not in BENCH_FIELDS:
        raise ValueError(f"unknown benchmark field {field!r}; expected one of {BENCH_FIELDS}")
    return f"bench_{model}_b{int(batch_size)}_{field}"


def parse_bench_key(key: str) -> tuple[str, int, str] | None:
    """(model, batch size, field) of a ``bench_key``; None for any other key."""
    match = _BENCH_KEY.fullmatch(key)
    return (match["model"], int(match["batch"]), match["field"]) if match else None


def bench_batch_sizes(keys: Iterable[str], model: str | None = None) -> list[int]:
    """Batch sizes with a median latency among ``keys`` (of ``model``, or of any model)."""
    found = set()
    for key in keys:
        parsed = parse_bench_key(key)
        if parsed and parsed[2] == "p50_ms" and model in (None, parsed[0]):
            found.add(parsed[1])
    return sorted(found)


def reference_accuracy_key(metrics: Mapping[str, Any]) -> str:
    """The key every accuracy drop is measured from: the ensemble's test accuracy when there is
    an ensemble, else the teacher's (evaluate@teacher's ``teacher_acc``)."""
    value = metrics.get(ENSEMBLE_ACC)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return ENSEMBLE_ACC
    return model_key(TEACHER, "acc")


# --- the model list ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelEntry:
    """One model of the pipeline, as ``models.yaml`` lists it."""

    name: str
    file: str
    stage: str  # the stage that writes the file (named in "missing input" errors)
    evaluated: bool  # True: listed under ``models`` (an evaluate@name item)
    accuracy_of: str  # whose evaluate gives its accuracy: itself, or the model it shares weights
    baseline: str | None = None  # the CSV's ``speedup_vs_baseline`` column compares with it


def read_model_list(path: str | Path) -> list[ModelEntry]:
    """The models of ``models.yaml``, in report order.

    ``models`` are evaluated and benchmarked; ``benchmark_only`` models share another model's
    weights in another runtime, take its accuracy (``accuracy_of``), and come right after it.
    """
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ShrinkflowError(f"{path}: cannot read the model list ({exc.strerror})") from exc
    except yaml.YAMLError as exc:
        raise ShrinkflowError(f"{path}: not valid YAML ({' '.join(str(exc).split())})") from exc
    if not isinstance(raw, dict) or not isinstance(raw.get("models"), dict) or not raw["models"]:
        raise ShrinkflowError(f"{path}: expected a non-empty mapping under 'models'")
    extra = raw.get("benchmark_only") or {}
    entries = [_entry(path, name, value, True) for name, value in raw["models"].items()]
    evaluated = [e.name for e in entries]
    if TEACHER not in evaluated:
        raise ShrinkflowError(f"{path}: 'models' must list {TEACHER!r} (speed-ups and accuracy "
                              "drops are measured against it)")
    for name, value in extra.items():
        entry = _entry(path, name, value, False)
        if entry.accuracy_of not in evaluated:
            raise ShrinkflowError(f"{path}: benchmark_only.{name}.accuracy_of = "
                                  f"{entry.accuracy_of!r}: expected one of {evaluated}")
        entries.insert(max(i for i, e in enumerate(entries)
                           if e.accuracy_of == entry.accuracy_of) + 1, entry)
    names = [e.name for e in entries]
    if len(set(names)) != len(names):
        raise ShrinkflowError(f"{path}: a model is listed twice: {names}")
    for e in entries:
        if e.baseline is not None and e.baseline not in names:
            raise ShrinkflowError(f"{path}: {e.name}.baseline = {e.baseline!r}: expected one of "
                                  f"{names}")
    return entries


def _entry(path: Path, name: str, value: object, evaluated: bool) -> ModelEntry:
    where = f"{path}: {'models' if evaluated else 'benchmark_only'}.{name}"
    if not _NAME.fullmatch(str(name)):
        raise ShrinkflowError(f"{where}: a model name may use only letters, digits and '_'")
    if not isinstance(value, dict) or not {"file", "stage"} <= set(value):
        raise ShrinkflowError(f"{where}: expected a mapping with 'file' and 'stage'")
    unknown = set(value) - {"file", "stage", "accuracy_of", "baseline"}
    if unknown:
        raise ShrinkflowError(f"{where}: unknown key(s) {sorted(unknown)}")
    if evaluated and value.get("accuracy_of", name) != name:
        raise ShrinkflowError(f"{where}: accuracy_of is for benchmark_only models")
    if not evaluated and "accuracy_of" not in value:
        raise ShrinkflowError(f"{where}: needs accuracy_of (the evaluated model it shares "
                              "weights with)")
    return ModelEntry(str(name), str(value["file"]), str(value["stage"]), evaluated,
                      str(value.get("accuracy_of", name)), value.get("baseline"))
