"""rung_scratch@NAME: the ladder's control for distillation, as train_student_scratch is distill's.

Rung NAME's student (``distill.student`` with the rung's keys changed) trained with distill's
recipe, seed and input size but no teacher, so it differs from the distilled rung only in the
loss; the gap is what distillation bought that rung. It trains when NAME is the rung that
shipped (metrics/shipped.json, written by select_final) or when ``ladder.scratch`` is ``every``;
otherwise it writes no figures, and DVC still records the item as done.

    python stages/rung_scratch.py NAME   # -> metrics/rung_scratch_NAME.json

Figures: ``rung_NAME_scratch_*`` (params, MACs, val and test accuracy, training seconds) and
``rung_NAME_kd_gain_points`` (the distilled rung's test accuracy minus the scratch one's).
"""

import sys

from shrinkflow.core.errors import ShrinkflowError, run_stage
from shrinkflow.core.metric_keys import KD_GAIN, model_key, rung_model
from shrinkflow.core.outputs import check_outputs, commit_outputs, read_json, require_inputs
from shrinkflow.params.common import ModelSpec
from shrinkflow.params.distill import DistillParams
from shrinkflow.params.ladder import LadderParams, rung_student
from shrinkflow.params.load import load_section

DATA_DIR = "data/prepared"
SHIPPED = "metrics/shipped.json"  # select_final: {"final_model": NAME}


def main() -> None:
    ladder = load_section(LadderParams)
    if len(sys.argv) != 2 or sys.argv[1] not in ladder.rungs:
        raise ShrinkflowError(f"usage: python stages/rung_scratch.py NAME (NAME: a rung of "
                              f"ladder.rungs in params.yaml: {sorted(ladder.rungs) or 'none'})")
    name = sys.argv[1]
    model = rung_model(name)
    p = load_section(DistillParams)
    student, input_size = rung_student(name, p.student, p.input_size, ladder.rungs[name])
    rung_eval = f"metrics/eval_{model}.json"
    require_inputs(f"rung_scratch@{name}", {SHIPPED: "select_final",
                                            rung_eval: f"distill_rung@{name}",
                                            f"{DATA_DIR}/meta.json": "prepare"})
    out_json = f"metrics/rung_scratch_{name}.json"
    check_outputs(out_json)
    shipped = read_json(SHIPPED).get("final_model")
    if ladder.scratch != "every" and shipped != model:
        with commit_outputs() as out:
            out.json(out_json, {})
        print(f"[rung_scratch@{name}] not trained: {shipped} shipped, not {model} "
              "(ladder.scratch: shipped) -> no figures")
        return
    train_control(name, model, p, student, input_size, read_json(rung_eval), out_json)


def train_control(name: str, model: str, p: DistillParams, student: ModelSpec, input_size: int,
                  rung_metrics: dict, out_json: str) -> None:
    """Train and measure the control. torch is imported here, not above: an item that does not
    train then starts without it."""
    from shrinkflow.data.prepared import load_prepared
    from shrinkflow.training.distributed import finish, is_main_process, launch
    from shrinkflow.training.loop import check_input_size, summary_line, train_supervised

    data = load_prepared(DATA_DIR)
    check_input_size(input_size, data.meta["shape"], f"ladder.rungs.{name}.input_size")
    launch(p.train.nproc, p.train.device, "distill.train.nproc")
    control = f"{model}_scratch"
    _, spec, _, m = train_supervised(student, p.train, data, name=control,
                                     params_key="distill.train", input_size=input_size)
    distilled = rung_metrics[model_key(model, "acc")]
    gain = round((distilled - m[model_key(control, "test_acc")]) * 100, 4)
    m[model_key(model, KD_GAIN)] = gain
    if is_main_process():
        with commit_outputs() as out:
            out.json(out_json, m)
        print(summary_line(control, spec, m), f"-> {out_json}; distillation bought {model} "
              f"{gain:+.2f} points")
    finish()


if __name__ == "__main__":
    run_stage(main)
