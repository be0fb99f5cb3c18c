"""The metrics contract: which models the pipeline has, and how their metric keys are named.

The model list lives in ``models.yaml`` at the project root. dvc.yaml loads it as ``vars`` (the
evaluate stage is ``foreach: ${models}``), and the benchmark and report stages and the tests read
it through ``read_model_list``: adding a model there adds its evaluate item, its benchmark and
its report row.

Key scheme (flat keys, unique across metrics files):

* ``<model>_<field>``: one model's figures, e.g. ``quantized_acc`` in ``eval_quantized.json``
  (``model_key``);
* the DVC metrics, the only keys ``dvc exp show`` and ``dvc metrics diff`` show: metrics/final.json
  (select_final) holds each evaluated model's ``<model>_acc``, ``test_images``,
  ``kd_gain_points`` and the shipped model's ``final_<field>`` for ``FINAL_FIELDS``
  (``final_key``); besides them only the training stages' live epoch counters. 9 models x 8
  evaluate figures, 26 benchmark timings and the stages' own summaries made 381 columns
  (DVC 3.67, digits); the other metrics/*.json files are plain outputs now, read by the report;
  latencies are columns of metrics/benchmark.csv.

Each task has one headline score (``Score``, ``task_score``): the evaluate field every drop,
budget and choice is measured in, ``acc`` for classification and ``map`` (COCO mAP) for
detection. Keys that name the score take its field: ``<model>_map``, ``final_map`` and
``teacher_map`` on detection data where classification has ``<model>_acc``, ``final_acc`` and
``teacher_acc`` (classification's keys are unchanged).

Build and parse keys only through these functions: report and compare read what evaluate and
select_final write, and a key spelled by hand in one place silently becomes a missing column.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from shrinkflow.core.errors import ShrinkflowError
from shrinkflow.core.tasks import CLASSIFICATION, DETECTION, meta_task

TEACHER = "teacher"  # every speed-up and accuracy drop is measured against this model ...
# ... or, with extra ensemble members (teacher.ensemble_seeds), accuracy drops against the
# ensemble's test accuracy (metrics/teacher_ensemble.json, absent or {} for one teacher)
ENSEMBLE_ACC = "teacher_ensemble_test_acc"
TEST_IMAGES = "test_images"  # final.json: the test-set size every accuracy is measured on
KD_GAIN = "kd_gain_points"  # final.json: student minus student_scratch, test points
STUDENT = "student"  # distill.student, distilled (distill): the model the ladder's rungs vary
# final.json: the shipped model ("none" when nothing is within budget) and its figures; _low /
# _high are the 95 % interval (shrinkflow.measure.noise); speedup is against the teacher's form
# in the same runtime at select's batch size
FINAL_FIELDS = ("model", "within_budget", "acc", "acc_low", "acc_high", "drop_points",
                "file_bytes", "speedup", "speedup_low", "speedup_high")
_NAME = re.compile(r"[A-Za-z0-9_]+")


@dataclass(frozen=True)
class Score:
    """A task's headline test score: what select_final's budget and the report measure in."""

    field: str  # evaluate's key suffix (``<model>_<field>`` in metrics/eval_<model>.json)
    name: str  # as people read it, in printed lines, the report and the card's labels
    heading: str  # the name at the start of a title ("Accuracy vs latency", "mAP vs latency")
    # True: a fraction of test images judged right or wrong, whose 95 % interval is binomial
    # (``noise.accuracy_estimate``); COCO mAP is not a proportion of images, so it has none
    binomial: bool


ACCURACY = Score("acc", "accuracy", "Accuracy", binomial=True)
MAP = Score("map", "mAP", "mAP", binomial=False)  # COCO mAP@[.5:.95] (measure.detection_metrics)
SCORES = {CLASSIFICATION: ACCURACY, DETECTION: MAP}


def task_score(data_meta: Mapping[str, Any]) -> Score:
    """The headline score of the task the prepared data's meta.json names
    (``core.tasks.meta_task``)."""
    task = meta_task(data_meta)
    if task not in SCORES:
        raise ShrinkflowError(f"data/prepared/meta.json: task {task!r}; expected one of "
                              f"{sorted(SCORES)}")
    return SCORES[task]


def model_key(model: str, field: str) -> str:
    """``<model>_<field>``, e.g. ``model_key("pruned", "acc") == "pruned_acc"``."""
    return f"{model}_{field}"


def score_field(field: str, score: Score = ACCURACY) -> str:
    """A field that names the accuracy (``acc``, ``acc_low``, ``acc_high``) as ``score``'s
    (``map``, ``map_low``, ...); any other field as it is. The one place an ``acc`` field
    becomes the task's score field: final.json, selection.json and the card."""
    return score.field + field[len("acc"):] if field.startswith("acc") else field


def final_key(field: str, score: Score = ACCURACY) -> str:
    """``final_<field>`` for a field of ``FINAL_FIELDS`` (metrics/final.json), its accuracy
    fields named after ``score`` (``final_map`` on detection data)."""
    if field not in FINAL_FIELDS:
        raise ValueError(f"unknown final field {field!r}; expected one of {FINAL_FIELDS}")
    return f"final_{score_field(field, score)}"


def reference_accuracy_key(metrics: Mapping[str, Any], score: Score = ACCURACY) -> str:
    """The key every drop is measured from: the ensemble's test accuracy when there is an
    ensemble (classification only), else the teacher's score (evaluate@teacher's
    ``teacher_acc``, ``teacher_map`` on detection data)."""
    value = metrics.get(ENSEMBLE_ACC)
    if score is ACCURACY and isinstance(value, (int, float)) and not isinstance(value, bool):
        return ENSEMBLE_ACC
    return model_key(TEACHER, score.field)


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
    rung: bool = False  # a rung of params' ladder.rungs (distill_rung@NAME writes it)


RUNG_PREFIX = "rung_"  # the ladder's rung NAME is the model rung_NAME


def rung_model(rung: str) -> str:
    """The model name of the ladder's rung ``rung`` (params ``ladder.rungs``)."""
    return f"{RUNG_PREFIX}{rung}"


def read_model_list(path: str | Path, rungs: Iterable[str] = ()) -> list[ModelEntry]:
    """The models of ``models.yaml``, in report order, then one per ladder rung.

    ``models`` are evaluated and benchmarked; ``benchmark_only`` models share another model's
    weights in another runtime, take its accuracy (``accuracy_of``), and come right after it.
    ``rungs`` (params ``ladder.rungs``): each is the evaluated model ``rung_NAME``, its fp32
    ONNX file ``NAME.onnx`` in the folder ``ladder_models.folder`` names.
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
    rungs = list(rungs)
    if rungs:
        ladder = raw.get("ladder_models")
        folder = ladder.get("folder") if isinstance(ladder, dict) else None
        if not isinstance(folder, str):
            raise ShrinkflowError(f"{path}: expected 'ladder_models: {{folder: ...}}', the "
                                  "rungs' model folder")
        entries += [ModelEntry(rung_model(r), f"{folder}/{r}.onnx", f"distill_rung@{r}", True,
                               rung_model(r), rung=True) for r in rungs]
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
