"""train_teacher: train the teacher on the prepared data with plain cross-entropy."""

from shrinkflow.artifacts import check_outputs, commit_outputs
from shrinkflow.data import load_prepared
from shrinkflow.errors import run_stage
from shrinkflow.params import load_section
from shrinkflow.train import summary_line, train_supervised

NAME = "teacher"
DATA_DIR = "data/prepared"
MODEL_OUT = "models/teacher.pt"
METRICS_OUT = "metrics/teacher.json"
HISTORY_OUT = "metrics/history_teacher.csv"


def main() -> None:
    p = load_section("teacher")
    check_outputs(MODEL_OUT, HISTORY_OUT, METRICS_OUT)
    data = load_prepared(DATA_DIR)
    model, spec, history, m = train_supervised(p.model, p.train, data, name=NAME,
                                               params_key="teacher.train")
    with commit_outputs() as out:
        out.model(MODEL_OUT, model, spec)
        out.csv(HISTORY_OUT, history)
        out.json(METRICS_OUT, m)
    print(summary_line(NAME, spec, m), "->", MODEL_OUT)


if __name__ == "__main__":
    run_stage(main)
