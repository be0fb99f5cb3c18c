"""distill: train the small student from the teacher (KD, or KD + hint / attention transfer).

With extra members (``teacher.ensemble_seeds``) the teacher is their ensemble: soft targets are
the mean of the members' softened probabilities (shrinkflow.compress.teacher_ensemble); hint /
attention need a
single teacher and are refused with one line.

The student is seeded and built exactly as in train_student_scratch (same spec, same seed, same
order), so the two differ only in the loss, and kd_gain_points measures what the teacher adds.
On detection data (``prepare.task: detection``): FCOS teacher and student, dense KD on the head
outputs (compress.detection_distill), and the gain in mAP points (kd_gain_map_points).
"""

from shrinkflow.compress.detection_distill import (
    DetectionKD,
    check_detection_student,
    check_same_stride,
    detection_distill_metrics,
)
from shrinkflow.compress.distill import distill_metrics
from shrinkflow.compress.distill_student import distill_student, load_fitting_teacher
from shrinkflow.compress.teacher_ensemble import (
    check_feature_method,
    teacher_files,
)
from shrinkflow.core.errors import ShrinkflowError, run_stage
from shrinkflow.core.outputs import check_outputs, commit_outputs, read_json, require_inputs
from shrinkflow.core.tasks import DETECTION, prepared_task
from shrinkflow.data.prepared import load_prepared
from shrinkflow.data.prepared_boxes import load_box_split
from shrinkflow.model_files.pt import load_model, write_model_file
from shrinkflow.nets.detectors import detector_spec
from shrinkflow.params.distill import DistillParams
from shrinkflow.params.load import load_section
from shrinkflow.params.teacher import TeacherParams
from shrinkflow.training.detection_loop import train_detector
from shrinkflow.training.distributed import finish, is_main_process, launch
from shrinkflow.training.live import live_progress
from shrinkflow.training.loop import effective_input_size

PARAMS = "params.yaml"
DATA_DIR = "data/prepared"
TEACHER = "models/teacher.pt"
MEMBERS_DIR = "models/teachers"  # extra ensemble members (train_teacher_member@SEED)
SCRATCH_METRICS = "metrics/student_scratch.json"
SCRATCH_KEY = "student_scratch_test_acc"
SCRATCH_MAP_KEY = "student_scratch_test_map"  # detection
MODEL_OUT = "models/student.pt"
METRICS_OUT = "metrics/distill.json"
HISTORY_OUT = "metrics/history_distill.csv"
LIVE_DIR = "dvclive/distill"  # per-epoch progress while it runs


def check_inputs(teachers: dict[str, str], key: str = SCRATCH_KEY) -> float:
    """Fail before any work if an input is missing; returns the scratch control's test figure
    under ``key`` (accuracy, or detection's mAP).

    ``teachers``: every teacher member's file -> the stage that writes it (for the message)."""
    require_inputs("distill", {f"{DATA_DIR}/meta.json": "prepare", **teachers,
                               SCRATCH_METRICS: "train_student_scratch"})
    check_outputs(MODEL_OUT, HISTORY_OUT, METRICS_OUT)
    scratch = read_json(SCRATCH_METRICS)
    if not isinstance(scratch.get(key), (int, float)):
        raise ShrinkflowError(f"{SCRATCH_METRICS}: expected a number under key {key!r}, "
                              f"got {scratch.get(key)!r}")
    return float(scratch[key])


def main() -> None:
    p = load_section(DistillParams, PARAMS)
    # only teacher.ensemble_seeds is read (dvc.yaml lists just that key)
    seeds = load_section(TeacherParams, PARAMS).ensemble_seeds
    teachers = teacher_files(TEACHER, MEMBERS_DIR, seeds)
    check_feature_method(p.method, len(teachers))
    if prepared_task(DATA_DIR) == DETECTION:
        distill_detector(p, teachers)
        return
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


def distill_detector(p: DistillParams, teachers: dict[str, str]) -> None:
    """``prepare.task: detection``: the FCOS student trained from the FCOS teacher's dense
    outputs (compress.detection_distill), seeded and built as the scratch control."""
    check_detection_student(p)
    if len(teachers) > 1:
        raise ShrinkflowError("teacher.ensemble_seeds: detection distils from one teacher; "
                              "expected []")
    scratch_map = check_inputs(teachers, SCRATCH_MAP_KEY)
    teacher, payload = load_model(TEACHER, role="teacher")
    student_spec = detector_spec(p.student, read_json(f"{DATA_DIR}/meta.json"), "distill.student")
    check_same_stride(student_spec, payload["spec"], TEACHER, "distill.student")
    kd = DetectionKD(teacher, T=p.T, alpha=p.alpha)
    with live_progress(LIVE_DIR, "distill") as on_epoch:
        student, spec, history, m = train_detector(
            p.student, p.train, DATA_DIR, "student", "distill.train", "distill.student",
            on_epoch, loss_fn=kd, loss_params={"distill.T": p.T, "distill.alpha": p.alpha})
    test, meta = load_box_split(DATA_DIR, "test")
    m = detection_distill_metrics(teacher, m, test, meta["classes"], scratch_map)
    with commit_outputs() as out:
        write_model_file(out.file(MODEL_OUT), student, spec, role="student", method=p.method,
                         T=p.T, alpha=p.alpha)
        out.csv(HISTORY_OUT, history)
        out.json(METRICS_OUT, m)
        out.adopt(LIVE_DIR)
    print(f"[distill] test mAP: student {m['student_test_map']:.3f}, teacher "
          f"{m['distill_teacher_test_map']:.3f}, scratch {m['distill_scratch_test_map']:.3f} -> "
          f"kd gain {m['kd_gain_map_points']:+.2f} mAP points ({m['distill_params_ratio']:.1f}x "
          f"fewer params) -> {MODEL_OUT}")


if __name__ == "__main__":
    run_stage(main)
