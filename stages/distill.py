"""distill: train the small student from the teacher (KD, or KD + hint / attention transfer).

With extra members (``teacher.ensemble_seeds``) the teacher is their ensemble: soft targets are
the mean of the members' softened probabilities (shrinkflow.compress.teacher_ensemble); hint /
attention need a
single teacher and are refused with one line.

The student is seeded and built exactly as in train_student_scratch (same spec, same seed, same
order), so the two differ only in the loss, and kd_gain_points measures what the teacher adds.
"""

from shrinkflow.compress.distill import distill_metrics
from shrinkflow.compress.distill_student import distill_student, load_fitting_teacher
from shrinkflow.compress.teacher_ensemble import (
    check_feature_method,
    teacher_files,
)
from shrinkflow.core.errors import ShrinkflowError, run_stage
from shrinkflow.core.outputs import check_outputs, commit_outputs, read_json, require_inputs
from shrinkflow.data.prepared import load_prepared
from shrinkflow.model_files.pt import write_model_file
from shrinkflow.params.distill import DistillParams
from shrinkflow.params.load import load_section
from shrinkflow.params.teacher import TeacherParams
from shrinkflow.training.distributed import finish, is_main_process, launch
from shrinkflow.training.loop import effective_input_size

PARAMS = "params.yaml"
DATA_DIR = "data/prepared"
TEACHER = "models/teacher.pt"
MEMBERS_DIR = "models/teachers"  # extra ensemble members (train_teacher_member@SEED)
SCRATCH_METRICS = "metrics/student_scratch.json"
SCRATCH_KEY = "student_scratch_test_acc"
MODEL_OUT = "models/student.pt"
METRICS_OUT = "metrics/distill.json"
HISTORY_OUT = "metrics/history_distill.csv"
LIVE_DIR = "dvclive/distill"  # per-epoch progress while it runs


def check_inputs(teachers: dict[str, str]) -> float:
    """Fail before any work if an input is missing; returns the scratch control's test acc.

    ``teachers``: every teacher member's file -> the stage that writes it (for the message)."""
    require_inputs("distill", {f"{DATA_DIR}/meta.json": "prepare", **teachers,
                               SCRATCH_METRICS: "train_student_scratch"})
    check_outputs(MODEL_OUT, HISTORY_OUT, METRICS_OUT)
    scratch = read_json(SCRATCH_METRICS)
    if not isinstance(scratch.get(SCRATCH_KEY), (int, float)):
        raise ShrinkflowError(f"{SCRATCH_METRICS}: expected a number under key {SCRATCH_KEY!r}, "
                              f"got {scratch.get(SCRATCH_KEY)!r}")
    return float(scratch[SCRATCH_KEY])


def main() -> None:
    p = load_section(DistillParams, PARAMS)
    # only teacher.ensemble_seeds is read (dvc.yaml lists just that key)
    seeds = load_section(TeacherParams, PARAMS).ensemble_seeds
    teachers = teacher_files(TEACHER, MEMBERS_DIR, seeds)
    check_feature_method(p.method, len(teachers))
    scratch_acc = check_inputs(teachers)
    data = load_prepared(DATA_DIR)
    meta, shape = data.meta, data.input_shape
    teacher = load_fitting_teacher(list(teachers), p.T, meta)
    launch(p.train.nproc, p.train.device, "distill.train.nproc")

    if len(teachers) > 1:
        print(f"[distill] teacher: an ensemble of {len(teachers)}")
    d = distill_student(p, p.student, p.input_size, "distill.input_size", teacher, data,
                        "distill", LIVE_DIR)
    student, spec, history, seconds = d.student, d.spec, d.history, d.seconds

    m = distill_metrics(teacher, student, data.test, shape, scratch_acc, seconds)
    m["distill_input_size"] = effective_input_size(spec, meta["shape"])  # MACs are at this size
    if is_main_process():  # every rank holds the same model; other ranks print nothing
        with commit_outputs() as out:
            write_model_file(out.file(MODEL_OUT), student, spec, role="student", method=p.method,
                             T=p.T, alpha=p.alpha)
            out.csv(HISTORY_OUT, history)
            out.json(METRICS_OUT, m)
            out.adopt(LIVE_DIR)  # the run's live progress (training.live)
    print(f"[distill] student input {m['distill_input_size']} (data "
          f"{meta['shape'][1]}x{meta['shape'][2]}), {m['distill_student_params']:,} params "
          f"({m['distill_params_ratio']:.1f}x fewer), {m['distill_student_macs']:,} MACs "
          f"({m['distill_macs_ratio']:.1f}x fewer)")
    print(f"[distill] test acc: student {m['student_test_acc']:.2%}, teacher "
          f"{m['distill_teacher_test_acc']:.2%}, scratch {m['distill_scratch_test_acc']:.2%} -> "
          f"kd gain {m['kd_gain_points']:+.2f} points")
    print(f"[distill] teacher/student agreement {m['teacher_student_agreement']:.2%}; "
          f"trained in {seconds:.1f}s -> {MODEL_OUT}")
    finish()


if __name__ == "__main__":
    run_stage(main)
