"""train_teacher: train the teacher with plain cross-entropy, fine-tune it from the user's weights
(``teacher.init``), or import a finished model (``teacher.mode: import``) and only evaluate it."""

from functools import partial

from shrinkflow.artifacts import check_outputs, commit_outputs
from shrinkflow.data import load_prepared
from shrinkflow.distributed import finish, is_main_process, launch
from shrinkflow.errors import run_stage
from shrinkflow.params import load_section
from shrinkflow.pretrained import HISTORY_COLUMNS, import_model, load_into, read_weights
from shrinkflow.train import summary_line, supervised_metrics, train_supervised

NAME = "teacher"
DATA_DIR = "data/prepared"
MODEL_OUT = "models/teacher.pt"
METRICS_OUT = "metrics/teacher.json"
HISTORY_OUT = "metrics/history_teacher.csv"


def main() -> None:
    p = load_section("teacher")
    check_outputs(MODEL_OUT, HISTORY_OUT, METRICS_OUT)
    weights = read_weights(p.init) if p.init else None
    data = load_prepared(DATA_DIR)
    launch(p.train.nproc if p.mode == "train" else 1, p.train.device, "teacher.train.nproc")
    if p.mode == "import":
        model, spec = import_model(weights, p.model, data.meta)
        history, m = [], supervised_metrics(model, data, NAME, [], seconds=0.0)
    else:
        init = partial(load_into, weights=weights) if weights else None
        model, spec, history, m = train_supervised(p.model, p.train, data, name=NAME, init=init,
                                                   params_key="teacher.train")
    provenance = {"mode": p.mode, "init": p.init} if p.init else {}
    if is_main_process():  # every rank holds the same model; other ranks print nothing
        with commit_outputs() as out:
            out.model(MODEL_OUT, model, spec, role=NAME, **provenance)
            out.csv(HISTORY_OUT, history, fieldnames=None if history else HISTORY_COLUMNS)
            out.json(METRICS_OUT, m)
    print(summary_line(NAME, spec, m), "->", MODEL_OUT)
    finish()


if __name__ == "__main__":
    run_stage(main)
