"""distill_rung@NAME: one rung of the student ladder (params ``ladder.rungs``), distilled from the
teacher exactly as distill trains ``distill.student`` (same loss, recipe and seed), with the
rung's keys changed, then exported to fp32 ONNX: the rung's candidate for the final model.

    python stages/distill_rung.py NAME   # -> models/ladder/NAME.pt, models/ladder/NAME.onnx

A rung is a candidate as a distilled fp32 ONNX model; pruning and int8 run on distill.student
only (docs/compression.md, "A ladder of students", says what that costs and saves). With
``ladder.early_stop.after_epochs`` set, a rung that cannot reach the teacher stops early
(``compress.early_stop``); metrics/rung_NAME.json says how many epochs it trained.
The stage also measures it on the test split as evaluate@NAME measures the other models
(metrics/eval_rung_NAME.json, confusion_ and per_class_rung_NAME.csv); benchmark and
select_final take it with the other models (its name there: rung_NAME).
"""

import sys
from pathlib import Path

from shrinkflow.compress.distill_student import distill_student, load_fitting_teacher
from shrinkflow.compress.early_stop import give_up_rule
from shrinkflow.compress.teacher_ensemble import (
    check_feature_method,
    teacher_files,
)
from shrinkflow.core.errors import ShrinkflowError, run_stage
from shrinkflow.core.metric_keys import model_key, read_model_list, rung_model
from shrinkflow.core.outputs import check_outputs, commit_outputs, require_inputs
from shrinkflow.data.prepared import load_prepared
from shrinkflow.measure.evaluate import write_evaluation
from shrinkflow.measure.metrics import logit_parity
from shrinkflow.model_files.export_onnx import FP32_MAX_ABS_DIFF, export_onnx
from shrinkflow.model_files.open import open_model
from shrinkflow.model_files.pt import write_model_file
from shrinkflow.params.distill import DistillParams
from shrinkflow.params.evaluate import EvaluateParams
from shrinkflow.params.ladder import LadderParams, rung_student
from shrinkflow.params.load import load_section
from shrinkflow.params.quantize import QuantizeParams
from shrinkflow.params.teacher import TeacherParams
from shrinkflow.training.distributed import finish, is_main_process, launch
from shrinkflow.training.loop import evaluate_loss_acc, resolve_device

DATA_DIR = "data/prepared"
TEACHER = "models/teacher.pt"
MEMBERS_DIR = "models/teachers"  # extra ensemble members (train_teacher_member@SEED)
MODEL_LIST = "models.yaml"  # names the rungs' folder (ladder_models)
METRICS_DIR = Path("metrics")  # eval_ / confusion_ / per_class_rung_NAME, rung_NAME.json


def main() -> None:
    ladder = load_section(LadderParams)
    rungs = ladder.rungs
    if len(sys.argv) != 2 or sys.argv[1] not in rungs:
        raise ShrinkflowError(f"usage: python stages/distill_rung.py NAME (NAME: a rung of "
                              f"ladder.rungs in params.yaml: {sorted(rungs) or 'none'})")
    name = sys.argv[1]
    stage, model = f"distill_rung@{name}", rung_model(name)
    p = load_section(DistillParams)
    student, input_size = rung_student(name, p.student, p.input_size, rungs[name])
    opset = load_section(QuantizeParams).opset  # as export_onnx@NAME exports
    onnx_out = Path(next(m.file for m in read_model_list(MODEL_LIST, [name]) if m.name == model))
    pt_out, live_dir = onnx_out.with_suffix(".pt"), f"dvclive/{model}"
    seeds = load_section(TeacherParams).ensemble_seeds
    teachers = teacher_files(TEACHER, MEMBERS_DIR, seeds)
    check_feature_method(p.method, len(teachers))
    require_inputs(stage, {f"{DATA_DIR}/meta.json": "prepare", **teachers})
    check_outputs(pt_out, onnx_out)
    data = load_prepared(DATA_DIR)
    meta = data.meta
    teacher = load_fitting_teacher(list(teachers), p.T, meta)
    launch(p.train.nproc, p.train.device, "distill.train.nproc")

    stop, early = None, ladder.early_stop
    if early.after_epochs:
        device = resolve_device(p.train.device, "distill.train.device")
        _, teacher_val = evaluate_loss_acc(teacher.to(device), data.val, device)
        stop = give_up_rule(teacher_val, p.train.epochs, early.after_epochs, early.points_behind,
                            len(data.val[1]))
    d = distill_student(p, student, input_size, f"ladder.rungs.{name}.input_size", teacher,
                        data, model, live_dir, stop)  # live keys rung_NAME_*
    x, y = data.test
    ep = load_section(EvaluateParams)
    if is_main_process():  # every rank holds the same model; other ranks print nothing
        with commit_outputs() as out:
            pt_path, onnx_path = out.file(pt_out), out.file(onnx_out)
            write_model_file(pt_path, d.student, d.spec, role="student", method=p.method,
                             T=p.T, alpha=p.alpha)
            export_onnx(d.student, tuple(meta["shape"]), onnx_path, opset)
            torch_form = open_model(pt_path, meta["shape"], meta["num_classes"])
            exported = open_model(onnx_path, meta["shape"], meta["num_classes"])
            parity = logit_parity(torch_form.predict(x), exported.predict(x))
            if parity["max_abs_diff"] > FP32_MAX_ABS_DIFF:
                raise ShrinkflowError(f"{onnx_out}: exported rung differs from its PyTorch "
                                      f"model by up to {parity['max_abs_diff']:.2e} in logits "
                                      f"(expected <= {FP32_MAX_ABS_DIFF:g}); nothing replaced")
            # the candidate's test figures, as evaluate@NAME writes them for the other models
            m = write_evaluation(out, METRICS_DIR, model, exported, x, y, meta["classes"],
                                 ep.batch_size, ep.ece_bins)
            out.json(METRICS_DIR / f"{model}.json", {
                model_key(model, "epochs_trained"): len(d.history),
                model_key(model, "stopped_early"): int(len(d.history) < p.train.epochs),
                model_key(model, "train_seconds"): round(d.seconds, 2)})
            out.adopt(live_dir)  # the run's live progress (training.live)
        print(f"[{stage}] {exported.params:,} params, {exported.macs:,} MACs, trained in "
              f"{d.seconds:.1f}s -> {pt_out}, {onnx_out} (max |diff| "
              f"{parity['max_abs_diff']:.1e}); test acc {m['acc']:.2%}")
    finish()


if __name__ == "__main__":
    run_stage(main)
