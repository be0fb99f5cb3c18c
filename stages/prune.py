"""prune: shrink the distilled student, then fine-tune it with distillation from the teacher.

structured: whole channels removed with torch-pruning (smaller, faster dense model).
unstructured: smallest weights zeroed (sparsity only: same shapes, same speed).
ratio auto (budget mode): per-layer widths from the sensitivity scan, pruned step by step while
the validation drop against the unpruned student stays within budget.max_drop_points
(shrinkflow.compress.prune_budget).
Outputs: models/pruned.pt (pruned state_dict + the student's spec; load_model resizes layers),
metrics/prune.json, metrics/history_prune.csv, metrics/prune_sensitivity.csv,
metrics/prune_steps.csv (budget mode's curve), metrics/prune_latency.csv (its latency table).

On detection data (``prepare.task: detection``): the FCOS student's backbone channels, heads
kept whole (compress.prune_detection), fine-tuned with the detection distillation from the
teacher; a fixed ratio only, no sensitivity scan (its CSVs are written with their headers only);
metrics in mAP.
"""

import time

from shrinkflow.compress.detection_distill import DetectionKD, check_same_stride
from shrinkflow.compress.distill import KDLoss
from shrinkflow.compress.prune import (
    make_finetune,
    model_accuracy,
    resolve_ignored,
    run_pruning,
    sensitivity_scan,
    size_change,
    size_summary,
    sparsity,
)
from shrinkflow.compress.prune_budget import (
    LATENCY_FIELDS,
    STEP_FIELDS,
    conv_widths,
    format_widths,
    run_budget_pruning,
)
from shrinkflow.compress.prune_detection import (
    check_detection_prune,
    check_detector_rebuilds,
    detector_size,
    prune_detector,
)
from shrinkflow.compress.prune_families import check_prunable, check_rebuilds
from shrinkflow.compress.teacher_ensemble import load_teacher, teacher_files
from shrinkflow.core.errors import ShrinkflowError, run_stage
from shrinkflow.core.outputs import check_outputs, commit_outputs, require_inputs
from shrinkflow.core.tasks import DETECTION, prepared_task
from shrinkflow.data.prepared import load_prepared
from shrinkflow.data.prepared_boxes import load_box_split
from shrinkflow.model_files.pt import load_model, write_model_file
from shrinkflow.params.budget import BudgetParams
from shrinkflow.params.load import load_section
from shrinkflow.params.prune import PruneParams
from shrinkflow.params.teacher import TeacherParams
from shrinkflow.training.detection_loop import split_map
from shrinkflow.training.distributed import finish, is_main_process, launch
from shrinkflow.training.live import live_progress
from shrinkflow.training.loop import seed_everything

DATA_DIR = "data/prepared"
STUDENT_IN = "models/student.pt"
TEACHER_IN = "models/teacher.pt"
MEMBERS_DIR = "models/teachers"  # extra ensemble members (train_teacher_member@SEED)
MODEL_OUT = "models/pruned.pt"
METRICS_OUT = "metrics/prune.json"
HISTORY_OUT = "metrics/history_prune.csv"
SENSITIVITY_OUT = "metrics/prune_sensitivity.csv"
STEPS_OUT = "metrics/prune_steps.csv"
LATENCY_OUT = "metrics/prune_latency.csv"
LIVE_DIR = "dvclive/prune"  # per-epoch progress of the fine-tunes while it runs
SENSITIVITY_FIELDS = ["layer", "ratio", "accuracy", "macs"]


def check_shapes(student_spec: dict, teacher_spec: dict, meta: dict) -> None:
    """The student, teacher and data must agree on channels and classes before any work."""
    for name, spec in (("student", student_spec), ("teacher", teacher_spec)):
        if spec["in_channels"] != meta["shape"][0] or spec["num_classes"] != meta["num_classes"]:
            raise ShrinkflowError(
                f"models/{name}.pt expects {spec['in_channels']} channels / "
                f"{spec['num_classes']} classes but {DATA_DIR} has {meta['shape'][0]} / "
                f"{meta['num_classes']}: rerun the stages after prepare"
            )


def main() -> None:
    p = load_section(PruneParams)
    budget = load_section(BudgetParams).max_drop_points  # auto: val, against the student
    # every teacher member (teacher.ensemble_seeds is the only teacher key read)
    teachers = teacher_files(TEACHER_IN, MEMBERS_DIR, load_section(TeacherParams).ensemble_seeds)
    require_inputs("prune", {f"{DATA_DIR}/meta.json": "prepare", STUDENT_IN: "distill",
                             **teachers})
    check_outputs(MODEL_OUT, HISTORY_OUT, SENSITIVITY_OUT, STEPS_OUT, LATENCY_OUT, METRICS_OUT)
    if prepared_task(DATA_DIR) == DETECTION:
        prune_detection(p, teachers)
        return
    data = load_prepared(DATA_DIR)
    student, payload = load_model(STUDENT_IN, role="student")
    # one member itself, or the ensemble's mean soft targets at the fine-tune's T
    teacher, teacher_payloads = load_teacher(list(teachers), p.kd.T)
    spec, shape = payload["spec"], tuple(data.meta["shape"])
    check_shapes(spec, teacher_payloads[0]["spec"], data.meta)  # load_teacher: members agree
    if p.mode == "structured":
        check_prunable(spec, STUDENT_IN)  # a refused family fails before any work
    resolve_ignored(student, list(p.ignore_layers))  # an unknown layer name fails here
    launch(p.train.nproc, p.train.device, "prune.train.nproc")
    seed_everything(p.seed)

    auto = p.ratio == "auto"
    before = size_summary(student, shape)
    student_acc = model_accuracy(student, data.test)
    student_val_acc = model_accuracy(student, data.val)
    print(f"[prune] student: {before['params']:,} params, {before['macs']:,} MACs, "
          f"test acc {student_acc:.2%}, val acc {student_val_acc:.2%}")

    rows: list[dict] = []
    if p.sensitivity:
        start = time.perf_counter()
        rows = sensitivity_scan(
            student, shape, data.val, list(p.sensitivity_ratios), p.importance,
            list(p.ignore_layers), p.sensitivity_max_layers, p.seed, data.train,
        )
        print(f"[prune] sensitivity scan on val: {len(rows)} trials in "
              f"{time.perf_counter() - start:.1f}s")

    loss = KDLoss(teacher, p.kd.T, p.kd.alpha, p.train.label_smoothing)
    with live_progress(LIVE_DIR, "prune") as on_epoch:
        finetune = make_finetune(
            data.train, data.val, p.train, loss_fn=loss, params_key="prune.train",
            loss_params={"prune.kd.T": p.kd.T, "prune.kd.alpha": p.kd.alpha}, on_epoch=on_epoch)
        if auto:
            outcome = run_budget_pruning(
                student, shape, p, rows, lambda m: model_accuracy(m, data.val), student_val_acc,
                budget,
                finetune=finetune, evaluate_before=lambda m: model_accuracy(m, data.test),
                train=data.train)
            stop_reason, chosen_step, steps = outcome.stop_reason, outcome.chosen_step, \
                outcome.steps
        else:
            outcome = run_pruning(
                student, shape, p, finetune=finetune,
                evaluate=lambda m: model_accuracy(m, data.test), train=data.train,
            )
            stop_reason = f"fixed ratio {p.ratio}"
            chosen_step, steps = p.iterative_steps, []
    pruned = outcome.model
    if p.mode == "structured":
        check_rebuilds(pruned, spec, shape)  # every later stage rebuilds it from the file
    after = size_summary(pruned, shape)
    pruned_acc = model_accuracy(pruned, data.test)
    pruned_val_acc = model_accuracy(pruned, data.val)
    metrics = {
        "prune_mode": p.mode,
        **size_change(before, after),
        "prune_sparsity": round(sparsity(pruned, resolve_ignored(pruned, p.ignore_layers)), 6),
        "prune_student_test_acc": round(student_acc, 6),
        # budget mode keeping step 0 pruned nothing: "before fine-tune" is the student itself
        "pruned_test_acc_before_finetune": round(student_acc if outcome.acc_before_finetune
                                                 is None else outcome.acc_before_finetune, 6),
        "pruned_test_acc": round(pruned_acc, 6),
        "prune_acc_drop_points": round(100 * (student_acc - pruned_acc), 4),
        # budget mode (ratio auto); the same keys for a fixed ratio keep `dvc exp show` aligned
        "prune_val_student_acc": round(student_val_acc, 6),
        "pruned_val_acc": round(pruned_val_acc, 6),
        "prune_val_drop_points": round(100 * (student_val_acc - pruned_val_acc), 4),
        "prune_budget_points": budget if auto else None,
        "prune_within_budget_on_test": (100 * (student_acc - pruned_acc) <= budget
                                        + 1e-9) if auto else None,
        "prune_step_chosen": chosen_step,
        "prune_stop_reason": stop_reason,
        "prune_channels": format_widths(conv_widths(pruned)),
        "prune_seconds": round(outcome.seconds, 2),
    }
    if is_main_process():  # every rank holds the same model; other ranks print nothing
        with commit_outputs() as out:
            write_model_file(out.file(MODEL_OUT), pruned, spec, role="pruned", pruned=True,
                             prune_mode=p.mode, prune_ratio=p.ratio,
                             prune_importance=p.importance)
            out.csv(HISTORY_OUT, outcome.history)
            out.csv(SENSITIVITY_OUT, rows, SENSITIVITY_FIELDS)  # header even with the scan off
            out.csv(STEPS_OUT, steps, STEP_FIELDS)  # header only for a fixed ratio
            out.csv(LATENCY_OUT, getattr(outcome, "latency_table", []), LATENCY_FIELDS)
            out.json(METRICS_OUT, metrics)
            out.adopt(LIVE_DIR)  # the run's live progress (training.live)
    method = "global L1 magnitude" if p.mode == "unstructured" else f"{p.importance} importance"
    kind = "sparsity (not speed)" if p.mode == "unstructured" else "channels removed"
    share = metrics["prune_sparsity"] if p.mode == "unstructured" else metrics[
        "prune_achieved_channel_ratio"]
    if auto:
        print(f"[prune] budget mode ({budget:g} points on val, target {p.target}): "
              f"{stop_reason}; channels {metrics['prune_channels']}; test drop "
              f"{metrics['prune_acc_drop_points']:.2f} points ("
              f"{'within' if metrics['prune_within_budget_on_test'] else 'OVER'} the budget "
              "on test)")
    print(
        f"[prune] {p.mode} ({method}) ratio {p.ratio} in {chosen_step} step(s): "
        f"{share:.1%} {kind}; params {before['params']:,} -> {after['params']:,} "
        f"({metrics['prune_params_ratio']:.2f}x), MACs {before['macs']:,} -> {after['macs']:,} "
        f"({metrics['prune_macs_ratio']:.2f}x)\n"
        f"[prune] test acc: student {student_acc:.2%}, pruned before fine-tune "
        f"{metrics['pruned_test_acc_before_finetune']:.2%}, after {pruned_acc:.2%} "
        f"(drop {metrics['prune_acc_drop_points']:.2f} points) in {outcome.seconds:.1f}s "
        f"-> {MODEL_OUT}"
    )
    finish()


def prune_detection(p: PruneParams, teachers: dict[str, str]) -> None:
    """``prepare.task: detection``: the student's backbone pruned to a fixed ratio, heads kept,
    fine-tuned with the teacher's dense-output distillation (compress.prune_detection)."""
    check_detection_prune(p)
    if len(teachers) > 1:
        raise ShrinkflowError("teacher.ensemble_seeds: detection distils from one teacher; "
                              "expected []")
    student, payload = load_model(STUDENT_IN, role="student")
    teacher, teacher_payload = load_model(TEACHER_IN, role="teacher")
    spec = payload["spec"]
    check_same_stride(spec, teacher_payload["spec"], TEACHER_IN, STUDENT_IN)
    train, meta = load_box_split(DATA_DIR, "train")
    val, _ = load_box_split(DATA_DIR, "val")
    test, _ = load_box_split(DATA_DIR, "test")
    classes, shape = meta["classes"], tuple(meta["shape"])
    if p.sensitivity:
        print("[prune] note: prune.sensitivity scans accuracy per layer, for classifiers; not "
              f"run on detection data ({SENSITIVITY_OUT} holds its header only)")
    seed_everything(p.seed)
    before = detector_size(student, shape)
    student_map, student_val_map = (split_map(student, s, classes)["map"] for s in (test, val))
    print(f"[prune] student: {before['params']:,} params, {before['macs']:,} MACs, test mAP "
          f"{student_map:.3f}, val mAP {student_val_map:.3f}")
    kd = DetectionKD(teacher, T=p.kd.T, alpha=p.kd.alpha)
    with live_progress(LIVE_DIR, "prune") as on_epoch:
        outcome = prune_detector(student, shape, p, train, val, test, classes, kd, on_epoch)
    pruned = outcome.model
    check_detector_rebuilds(pruned, spec, shape)  # every later stage rebuilds it from the file
    after = detector_size(pruned, shape)
    pruned_map, pruned_val_map = (split_map(pruned, s, classes)["map"] for s in (test, val))
    metrics = {
        "prune_mode": p.mode,
        **size_change(before, after),
        "prune_student_test_map": student_map,
        "pruned_test_map_before_finetune": round(outcome.acc_before_finetune, 6),
        "pruned_test_map": pruned_map,
        "prune_map_drop_points": round(100 * (student_map - pruned_map), 4),
        "prune_val_student_map": student_val_map,
        "pruned_val_map": pruned_val_map,
        "prune_val_drop_points": round(100 * (student_val_map - pruned_val_map), 4),
        "prune_step_chosen": p.iterative_steps,
        "prune_stop_reason": f"fixed ratio {p.ratio}",
        "prune_channels": format_widths(conv_widths(pruned.backbone)),
        "prune_seconds": round(outcome.seconds, 2),
    }
    with commit_outputs() as out:
        write_model_file(out.file(MODEL_OUT), pruned, spec, role="pruned", pruned=True,
                         prune_mode=p.mode, prune_ratio=p.ratio, prune_importance=p.importance)
        out.csv(HISTORY_OUT, outcome.history)
        out.csv(SENSITIVITY_OUT, [], SENSITIVITY_FIELDS)
        out.csv(STEPS_OUT, [], STEP_FIELDS)
        out.csv(LATENCY_OUT, [], LATENCY_FIELDS)
        out.json(METRICS_OUT, metrics)
        out.adopt(LIVE_DIR)
    print(f"[prune] structured ({p.importance}) ratio {p.ratio} in {p.iterative_steps} step(s), "
          f"heads kept: backbone {metrics['prune_channels']}; params {before['params']:,} -> "
          f"{after['params']:,}, MACs {before['macs']:,} -> {after['macs']:,} "
          f"({metrics['prune_macs_ratio']:.2f}x)\n"
          f"[prune] test mAP: student {student_map:.3f}, pruned before fine-tune "
          f"{outcome.acc_before_finetune:.3f}, after {pruned_map:.3f} (drop "
          f"{metrics['prune_map_drop_points']:.2f} points) in {outcome.seconds:.1f}s -> "
          f"{MODEL_OUT}")


if __name__ == "__main__":
    run_stage(main)
