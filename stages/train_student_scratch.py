"""train_student_scratch: the control for distillation.

The distill student architecture, trained with the same budget (epochs, optimiser, seed, data)
and the same input size, but no teacher. It reads only distill.student, distill.input_size and
distill.train, so changing T / alpha / method does not rerun it; distill reports kd_gain against
it. On detection data (``prepare.task: detection``) the student is an FCOS detector and the
figures are COCO mAP."""

from shrinkflow.compress.detection_distill import check_detection_student
from shrinkflow.core.errors import run_stage
from shrinkflow.core.outputs import check_outputs, commit_outputs
from shrinkflow.core.tasks import DETECTION, prepared_task
from shrinkflow.data.prepared import load_prepared
from shrinkflow.model_files.pt import write_model_file
from shrinkflow.nets.detectors import detector_label
from shrinkflow.params.distill import DistillParams
from shrinkflow.params.load import load_section
from shrinkflow.training.detection_loop import train_detector
from shrinkflow.training.distributed import finish, is_main_process, launch
from shrinkflow.training.live import live_progress
from shrinkflow.training.loop import check_input_size, summary_line, train_supervised

NAME = "student_scratch"
DATA_DIR = "data/prepared"
MODEL_OUT = "models/student_scratch.pt"
METRICS_OUT = "metrics/student_scratch.json"
HISTORY_OUT = "metrics/history_student_scratch.csv"
LIVE_DIR = "dvclive/student_scratch"  # per-epoch progress while it runs


def main() -> None:
    p = load_section(DistillParams)
    check_outputs(MODEL_OUT, HISTORY_OUT, METRICS_OUT)
    if prepared_task(DATA_DIR) == DETECTION:
        train_detection_scratch(p)
        return
    data = load_prepared(DATA_DIR)
    check_input_size(p.input_size, data.meta["shape"], "distill.input_size")
    launch(p.train.nproc, p.train.device, "distill.train.nproc")
    with live_progress(LIVE_DIR, NAME) as on_epoch:
        model, spec, history, m = train_supervised(p.student, p.train, data, name=NAME,
                                                   params_key="distill.train", on_epoch=on_epoch,
                                                   input_size=p.input_size)
    if is_main_process():  # every rank holds the same model; other ranks print nothing
        with commit_outputs() as out:
            write_model_file(out.file(MODEL_OUT), model, spec, role=NAME)
            out.csv(HISTORY_OUT, history)
            out.json(METRICS_OUT, m)
            out.adopt(LIVE_DIR)  # the run's live progress (training.live)
    print(summary_line(NAME, spec, m), "->", MODEL_OUT)
    finish()


def train_detection_scratch(p: DistillParams) -> None:
    """``prepare.task: detection``: the FCOS student, trained on the labelled boxes only."""
    check_detection_student(p)
    with live_progress(LIVE_DIR, NAME) as on_epoch:
        model, spec, history, m = train_detector(p.student, p.train, DATA_DIR, NAME,
                                                 "distill.train", "distill.student", on_epoch)
    with commit_outputs() as out:
        write_model_file(out.file(MODEL_OUT), model, spec, role=NAME)
        out.csv(HISTORY_OUT, history)
        out.json(METRICS_OUT, m)
        out.adopt(LIVE_DIR)
    print(f"[{NAME}] {detector_label(spec)} {m[f'{NAME}_params']:,} params: test mAP "
          f"{m[f'{NAME}_test_map']:.3f} "
          f"in {m[f'{NAME}_train_seconds']:.1f}s ->", MODEL_OUT)


if __name__ == "__main__":
    run_stage(main)
