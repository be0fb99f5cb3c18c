"""train_teacher: train the teacher on the prepared data with plain cross-entropy."""

from shrinkflow.artifacts import save_model, write_csv, write_json
from shrinkflow.data import load_prepared
from shrinkflow.errors import run_stage
from shrinkflow.live import live_progress
from shrinkflow.params import load_section
from shrinkflow.train import summary_line, train_supervised

NAME = "teacher"
DATA_DIR = "data/prepared"
MODEL_OUT = "models/teacher.pt"
METRICS_OUT = "metrics/teacher.json"
HISTORY_OUT = "metrics/history_teacher.csv"
LIVE_DIR = "dvclive/teacher"  # per-epoch progress while it runs


def main() -> None:
    p = load_section("teacher")
    data = load_prepared(DATA_DIR)
    with live_progress(LIVE_DIR, NAME) as on_epoch:
        model, spec, history, m = train_supervised(p.model, p.train, data, name=NAME,
                                                   on_epoch=on_epoch)
    save_model(MODEL_OUT, model, spec)
    write_csv(HISTORY_OUT, history)
    write_json(METRICS_OUT, m)
    print(summary_line(NAME, spec, m), "->", MODEL_OUT)


if __name__ == "__main__":
    run_stage(main)
