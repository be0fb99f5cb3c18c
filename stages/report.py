"""report: reports/summary.md and PNG charts from every metrics file (see shrinkflow.report).

One table row per model of models.yaml."""

from pathlib import Path

from shrinkflow.errors import ShrinkflowError, run_stage
from shrinkflow.metric_keys import read_model_list
from shrinkflow.params import load_section
from shrinkflow.report import build_report

METRICS_DIR = "metrics"
OUT_DIR = "reports"
MODEL_LIST = "models.yaml"


def main() -> None:
    p = load_section("report")
    if not Path(METRICS_DIR).is_dir():
        raise ShrinkflowError(f"{METRICS_DIR}/ not found: run the pipeline before the report")
    models = read_model_list(MODEL_LIST)
    page, charts, notes = build_report(METRICS_DIR, OUT_DIR, p.max_drop_points, models)
    for note in notes:
        print(f"[report] note: {note}")
    print(f"[report] wrote {page} and {len(charts)} charts: {', '.join(c.name for c in charts)}")


if __name__ == "__main__":
    run_stage(main)
