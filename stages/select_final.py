"""select_final: the one deployable model, chosen under the accuracy budget (see
shrinkflow.results.select_final).

Reads every evaluated model's metrics/eval_NAME.json and metrics/benchmark.csv, picks the
fastest candidate at ``select.batch_size`` within ``select.max_drop_points`` of the teacher (of
the teacher ensemble's accuracy in metrics/teacher_ensemble.json when there is one) and
``select.max_file_bytes``, and writes:

* ``models/final/`` holding the model, ``model.onnx`` or ``model.pt`` (when a PyTorch form
  wins), with its model card inside (shrinkflow.card), and the same card as ``card.json``.
  A fixed DVC path (``dvc get REPO models/final``) whose model keeps the suffix its runtime
  opens by; declaring both ``final.onnx`` and ``final.pt`` as outs would fail, since DVC
  requires every declared out to exist after the stage. ``python -m shrinkflow.cli.predict
  models/final/model.onnx IMAGES...`` runs it from the card alone;
* ``metrics/final.json``: flat ``final_*`` keys (model, format, accuracy, drop, size, latency,
  speed-ups, runner-up) for ``dvc exp show``.

When no candidate is within budget the stage fails with one line naming the closest, and the
previous models/final/ and metrics/final.json stay as they were.

The stage, this script and its module are all select_final, not select: Python puts a script's
folder first on sys.path, and a ``select.py`` there would shadow the standard library module that
subprocess imports.
"""

import csv
from pathlib import Path

from shrinkflow.core.errors import ShrinkflowError, run_stage
from shrinkflow.core.metric_keys import TEACHER, read_model_list
from shrinkflow.core.outputs import commit_outputs, read_json, require_inputs
from shrinkflow.model_files.card import CARD_FILE, card_json, pipeline_commit, write_model_card
from shrinkflow.params.load import load_section
from shrinkflow.params.select import SelectParams
from shrinkflow.results.select_final import build_candidates, choose, final_card, final_metrics

MODEL_LIST = "models.yaml"
BENCH_CSV = "metrics/benchmark.csv"
FINAL_DIR = Path("models/final")
METRICS_OUT = "metrics/final.json"
DATA_META = "data/prepared/meta.json"
# what the card's pipeline.modified lists when it differs from the commit checked out
PIPELINE_FILES = ["dvc.yaml", "params.yaml", "models.yaml", "stages", "src"]
ENSEMBLE_METRICS = "metrics/teacher_ensemble.json"


def main() -> None:
    p = load_section(SelectParams)
    models = read_model_list(MODEL_LIST)
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
    candidates, notes = build_candidates(models, metrics, rows, batch, p.exclude)
    for note in notes:
        print(f"[select] note: {note}")
    for c in sorted(candidates, key=lambda c: c.p50_ms):
        print(f"[select] {c.name:<16} {c.runtime + ' ' + c.precision:<20} acc {c.accuracy:.2%} "
              f"drop {c.drop_points:+.2f} pts  b{batch} p50 {c.p50_ms:.4f} ms  "
              f"{c.file_bytes:,} bytes")
    s = choose(candidates, p.max_drop_points, p.max_file_bytes, batch)
    source = Path(s.final.file)
    if not source.is_file():
        raise ShrinkflowError(f"{source}: the chosen model's file is missing (rerun its stage)")
    fmt = source.suffix.lstrip(".")
    final_file = FINAL_DIR / f"model{source.suffix}"
    teacher_bytes = next((int(r["file_bytes"]) for r in rows if r["model"] == TEACHER), None)
    card = final_card(s.final, models, metrics, rows, read_json(DATA_META), fmt,
                      pipeline_commit(PIPELINE_FILES))
    with commit_outputs() as out:  # the folder and the metrics land together, or neither
        folder = out.directory(FINAL_DIR)
        write_model_card(source, folder / final_file.name, card)
        (folder / CARD_FILE).write_text(card_json(card))
        out.json(METRICS_OUT, final_metrics(s, str(final_file), fmt, batch, p.max_drop_points,
                                            teacher_bytes))
    same = s.final.speedup_same_runtime
    print(f"[select] final: {s.final.name} -> {final_file} ({s.reason}); acc "
          f"{s.final.accuracy:.2%}, drop {s.final.drop_points:.2f} pts, "
          f"{s.final.file_bytes:,} bytes, "
          + (f"{same:.2f}x faster than the teacher in the same runtime" if same else
             "no same-runtime teacher measured"))


if __name__ == "__main__":
    run_stage(main)
