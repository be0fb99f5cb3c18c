"""select_final: the one deployable model, chosen under the accuracy budget (see
shrinkflow.results.select_final).

Reads every evaluated model's metrics/eval_NAME.json and metrics/benchmark.csv, picks the
fastest candidate at ``select.batch_size`` within ``budget.max_drop_points`` of the teacher (of
the teacher ensemble's accuracy in metrics/teacher_ensemble.json when there is one) and
``select.max_file_bytes``, and writes:

* ``models/final/`` holding the model, ``model.onnx`` or ``model.pt`` (when a PyTorch form
  wins), with its model card inside (shrinkflow.card), and the same card as ``card.json``.
  A fixed DVC path (``dvc get REPO models/final``) whose model keeps the suffix its runtime
  opens by; declaring both ``final.onnx`` and ``final.pt`` as outs would fail, since DVC
  requires every declared out to exist after the stage. ``python -m shrinkflow.cli.predict
  models/final/model.onnx IMAGES...`` runs it from the card alone;
* ``metrics/final.json``: the DVC metrics ``dvc exp show`` compares: each model's accuracy, the
  test-set size, the distillation gain, the final model's accuracy (95 % interval), drop, size
  and same-runtime speed-up (interval over the benchmark's rounds);
* ``metrics/selection.json``: the whole decision (reason, every candidate against the budget,
  runner-up, latency ties), read by the report;
* ``metrics/shipped.json``: the shipped model's name alone, for rung_scratch@NAME, which trains
  the shipped rung's control: a dep that changes only when another model ships (final.json and
  selection.json change with every re-timing).

On detection data (``prepare.task: detection``, read from data/prepared/meta.json) the score is
the test mAP (evaluate's ``<model>_map``), the budget is in mAP points against the teacher's mAP,
and every file above names it so: final.json's ``<model>_map`` and ``final_map`` (its
``final_map_low`` / ``final_map_high`` null: mAP has no binomial interval), selection.json's
``map`` and ``teacher_map``, the card's ``test_map`` (shrinkflow.core.metric_keys.task_score).

When no candidate is within budget the stage still succeeds and writes all four: models/final/
then holds only ``NO_MODEL.md`` (why, and what to change), final.json says ``final_model: none``
and selection.json ``status: none_within_budget``. The report stage, which runs next, draws the
candidates against the budget and then ends the pipeline with a non-zero exit; a stale model
from an earlier run is never left in models/final/ looking like the answer.

The stage, this script and its module are all select_final, not select: Python puts a script's
folder first on sys.path, and a ``select.py`` there would shadow the standard library module that
subprocess imports.
"""

import csv
from pathlib import Path

from shrinkflow.core.errors import ShrinkflowError, run_stage
from shrinkflow.core.metric_keys import (
    Score,
    read_model_list,
    reference_accuracy_key,
    task_score,
)
from shrinkflow.core.outputs import commit_outputs, read_json, require_inputs
from shrinkflow.model_files.card import CARD_FILE, card_json, pipeline_commit, write_model_card
from shrinkflow.params.budget import BudgetParams
from shrinkflow.params.ladder import LadderParams
from shrinkflow.params.load import load_section
from shrinkflow.params.select import SelectParams
from shrinkflow.results.select_final import (
    NONE,
    Selection,
    build_candidates,
    choose,
    final_card,
    final_metrics,
    selection_record,
)

MODEL_LIST = "models.yaml"
BENCH_CSV = "metrics/benchmark.csv"
FINAL_DIR = Path("models/final")
METRICS_OUT = "metrics/final.json"
SELECTION_OUT = "metrics/selection.json"
SHIPPED_OUT = "metrics/shipped.json"
NO_MODEL = "NO_MODEL.md"
DATA_META = "data/prepared/meta.json"
# what the card's pipeline.modified lists when it differs from the commit checked out
PIPELINE_FILES = ["dvc.yaml", "params.yaml", "models.yaml", "stages", "src"]
ENSEMBLE_METRICS = "metrics/teacher_ensemble.json"


def main() -> None:
    p = load_section(SelectParams)
    budget = load_section(BudgetParams).max_drop_points
    models = read_model_list(MODEL_LIST, load_section(LadderParams).rungs)
    names = [m.name for m in models]
    unknown = [n for n in p.exclude if n not in names]
    if unknown:
        raise ShrinkflowError(f"select.exclude: {unknown} not in {MODEL_LIST} (models: {names})")
    evals = {f"metrics/eval_{m.name}.json": f"evaluate@{m.name}" for m in models if m.evaluated}
    # and the ensemble's accuracy, the drops' reference when there are extra members ({} else)
    sources = {**evals, ENSEMBLE_METRICS: "teacher_ensemble"}
    require_inputs("select_final", {BENCH_CSV: "benchmark", DATA_META: "prepare", **sources})
    with open(BENCH_CSV, newline="") as fh:
        rows = list(csv.DictReader(fh))
    sizes = sorted({int(r["batch_size"]) for r in rows})
    batch = p.batch_size or (sizes[-1] if sizes else 0)
    if batch not in sizes:
        raise ShrinkflowError(f"select.batch_size = {p.batch_size}: not benchmarked (benchmark "
                              f"batch sizes in {BENCH_CSV}: {sizes}; 0 = the largest)")
    metrics = {k: v for path in sources for k, v in read_json(path).items()}
    data_meta = read_json(DATA_META)
    score = task_score(data_meta)  # accuracy, or mAP on detection data
    candidates, notes = build_candidates(models, metrics, rows, batch, p.exclude, score)
    for note in notes:
        print(f"[select] note: {note}")
    for c in sorted(candidates, key=lambda c: c.p50_ms):
        print(f"[select] {c.name:<16} {c.runtime + ' ' + c.precision:<20} "
              f"{score.field} {c.accuracy:.2%} drop {c.drop_points:+.2f} pts  "
              f"b{batch} p50 {c.p50_ms:.4f} ms  {c.file_bytes:,} bytes")
    s = choose(candidates, budget, p.max_file_bytes, batch)
    teacher_acc = candidates_reference(metrics, score)
    if s.final is None:
        write_none(s, models, metrics, batch, budget, p.max_file_bytes, teacher_acc, score)
        return
    source = Path(s.final.file)
    if not source.is_file():
        raise ShrinkflowError(f"{source}: the chosen model's file is missing (rerun its stage)")
    fmt = source.suffix.lstrip(".")
    final_file = FINAL_DIR / f"model{source.suffix}"
    card = final_card(s.final, models, metrics, rows, data_meta, fmt,
                      pipeline_commit(PIPELINE_FILES), score)
    with commit_outputs() as out:  # the folder and the metrics land together, or neither
        folder = out.directory(FINAL_DIR)
        write_model_card(source, folder / final_file.name, card)
        (folder / CARD_FILE).write_text(card_json(card))
        out.json(METRICS_OUT, final_metrics(s, models, metrics, score))
        out.json(SELECTION_OUT, selection_record(s, str(final_file), batch, budget,
                                                 p.max_file_bytes, teacher_acc, score))
        out.json(SHIPPED_OUT, {"final_model": s.final.name})
    same = s.final.speedup_same_runtime
    print(f"[select] final: {s.final.name} -> {final_file} ({s.reason}); {score.field} "
          f"{s.final.accuracy:.2%}, drop {s.final.drop_points:.2f} pts, "
          f"{s.final.file_bytes:,} bytes, "
          + (f"{same:.2f}x faster than the teacher in the same runtime" if same else
             "no same-runtime teacher measured"))


def candidates_reference(metrics: dict, score: Score) -> float:
    """The drops' reference (the teacher's score, or the ensemble's accuracy)."""
    return float(metrics[reference_accuracy_key(metrics, score)])


def write_none(s: Selection, models: list, metrics: dict, batch: int, budget: float,
               max_file_bytes: int, teacher_acc: float, score: Score) -> None:
    """Nothing within budget: outputs that say so (the report, next, shows the candidates and
    fails the pipeline), and no model in models/final/."""
    with commit_outputs() as out:
        folder = out.directory(FINAL_DIR)
        (folder / NO_MODEL).write_text(
            f"# No model within the budget\n\n{s.reason}.\n\nSee reports/summary.md for every "
            "candidate against the budget and what to change (a bigger student, longer training, "
            "or a larger budget.max_drop_points in params.yaml).\n")
        out.json(METRICS_OUT, final_metrics(s, models, metrics, score))
        out.json(SELECTION_OUT, selection_record(s, None, batch, budget, max_file_bytes,
                                                 teacher_acc, score))
        out.json(SHIPPED_OUT, {"final_model": NONE})
    print(f"[select] NO MODEL SHIPPED: {s.reason}. {FINAL_DIR}/{NO_MODEL} says so; the report "
          "stage shows the candidates against the budget, then fails the pipeline")


if __name__ == "__main__":
    run_stage(main)
