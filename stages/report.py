"""report: reports/summary.md and PNG charts from every metrics file (see
shrinkflow.results.report).

One table row per model of models.yaml. The report is written whatever select_final decided;
when it shipped nothing (no model within ``budget.max_drop_points``), the report shows the
candidates against the budget and what to change, and then this stage, the pipeline's last,
exits non-zero: `dvc repro` fails with one line pointing at the report, and reruns the report
(seconds) until the budget or the models change.

On detection data (``prepare.task: detection`` in data/prepared/meta.json) the page and the same
charts measure the test mAP (x 100) instead of accuracy, with drops in mAP points and no
accuracy interval (shrinkflow.core.metric_keys.task_score).
"""

from pathlib import Path

from shrinkflow.core.errors import ShrinkflowError, run_stage
from shrinkflow.core.metric_keys import read_model_list, task_score
from shrinkflow.core.outputs import commit_outputs, read_json, require_inputs
from shrinkflow.params.budget import BudgetParams
from shrinkflow.params.ladder import LadderParams
from shrinkflow.params.load import load_section
from shrinkflow.results.report import build_report, read_selection

METRICS_DIR = "metrics"
OUT_DIR = "reports"
MODEL_LIST = "models.yaml"
DATA_META = "data/prepared/meta.json"  # the task: which score the page measures


def main() -> None:
    budget = load_section(BudgetParams).max_drop_points
    if not Path(METRICS_DIR).is_dir():
        raise ShrinkflowError(f"{METRICS_DIR}/ not found: run the pipeline before the report")
    models = read_model_list(MODEL_LIST, load_section(LadderParams).rungs)
    require_inputs("report", {DATA_META: "prepare"})
    score = task_score(read_json(DATA_META))
    with commit_outputs() as out:  # the whole folder: a chart no longer drawn does not linger
        page, charts, notes = build_report(METRICS_DIR, out.directory(OUT_DIR), budget, models,
                                           score)
    for note in notes:
        print(f"[report] note: {note}")
    print(f"[report] wrote {Path(OUT_DIR) / page.name} and {len(charts)} charts: "
          f"{', '.join(c.name for c in charts)}")
    selection = read_selection(Path(METRICS_DIR))
    if selection is not None and selection.get("status") != "selected":
        raise ShrinkflowError(f"no model shipped: {selection.get('reason')}. The report "
                              f"({Path(OUT_DIR) / page.name}) shows every candidate against "
                              "the budget and what to change")


if __name__ == "__main__":
    run_stage(main)
