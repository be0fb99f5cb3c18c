"""report: reports/summary.md and PNG charts from every metrics file (see
shrinkflow.results.report).

One table row per model of models.yaml."""

from pathlib import Path

from shrinkflow.core.errors import ShrinkflowError, run_stage
from shrinkflow.core.metric_keys import read_model_list
from shrinkflow.core.outputs import commit_outputs
from shrinkflow.params.load import load_section
from shrinkflow.params.report import ReportParams
from shrinkflow.results.report import build_report

METRICS_DIR = "metrics"
OUT_DIR = "reports"
MODEL_LIST = "models.yaml"


def main() -> None:
    p = load_section(ReportParams)
    if not Path(METRICS_DIR).is_dir():
        raise ShrinkflowError(f"{METRICS_DIR}/ not found: run the pipeline before the report")
    models = read_model_list(MODEL_LIST)
    with commit_outputs() as out:  # the whole folder: a chart no longer drawn does not linger
        page, charts, notes = build_report(METRICS_DIR, out.directory(OUT_DIR), p.max_drop_points,
                                           models)
    for note in notes:
        print(f"[report] note: {note}")
    print(f"[report] wrote {Path(OUT_DIR) / page.name} and {len(charts)} charts: "
          f"{', '.join(c.name for c in charts)}")


if __name__ == "__main__":
    run_stage(main)
