"""train_teacher: train the teacher with plain cross-entropy, fine-tune it from the user's weights
(``teacher.init``), or import a finished model (``teacher.mode: import``) and only evaluate it.

``python stages/train_teacher.py SEED`` trains one extra ensemble member instead (dvc.yaml's
``train_teacher_member@SEED``, one item per ``teacher.ensemble_seeds``): the same model and
recipe with ``teacher.train.seed`` replaced by SEED, written to models/teachers/teacher_SEED.pt
and metrics/teacher_SEED.json (keys ``teacher_SEED_*``). Without an argument it is member 0,
exactly the single teacher of before (same paths, keys and bytes).

On detection data (``prepare.task: detection``) it trains an FCOS detector around the cnn stages
of ``teacher.model`` instead (training.detection_loop); its metrics are COCO mAP.
"""

import sys
from functools import partial

from shrinkflow.compress.teacher_ensemble import member_file
from shrinkflow.core.errors import ShrinkflowError, run_stage
from shrinkflow.core.outputs import check_outputs, commit_outputs
from shrinkflow.core.tasks import DETECTION, prepared_task
from shrinkflow.data.prepared import load_prepared
from shrinkflow.model_files.pt import write_model_file
from shrinkflow.model_files.user_weights import (
    HISTORY_COLUMNS,
    import_model,
    load_into,
    read_weights,
)
from shrinkflow.nets.detectors import detector_label
from shrinkflow.params.load import load_section
from shrinkflow.params.teacher import TeacherParams
from shrinkflow.training.detection_loop import train_detector
from shrinkflow.training.distributed import finish, is_main_process, launch
from shrinkflow.training.live import live_progress
from shrinkflow.training.loop import summary_line, supervised_metrics, train_supervised

NAME = "teacher"  # member 0; an extra member is teacher_SEED
DATA_DIR = "data/prepared"
MODEL_OUT = "models/teacher.pt"
MEMBERS_DIR = "models/teachers"  # extra ensemble members, one file per seed
# metrics/<name>.json, metrics/history_<name>.csv, and dvclive/<name>/ (per-epoch progress)


def member_seed(argv: list[str], seeds: list[int]) -> int | None:
    """The extra member's seed from the command line (None: member 0, the teacher)."""
    if not argv:
        return None
    if len(argv) > 1 or not argv[0].isdigit() or int(argv[0]) not in seeds:
        raise ShrinkflowError(f"usage: train_teacher.py [SEED], SEED one of teacher.ensemble_seeds "
                              f"{seeds}; got {' '.join(argv)!r}")
    return int(argv[0])


def main() -> None:
    p = load_section(TeacherParams)
    seed = member_seed(sys.argv[1:], list(p.ensemble_seeds))
    name = NAME if seed is None else f"{NAME}_{seed}"
    model_out = MODEL_OUT if seed is None else str(member_file(MEMBERS_DIR, seed))
    metrics_out, history_out = f"metrics/{name}.json", f"metrics/history_{name}.csv"
    train = p.train if seed is None else p.train.model_copy(update={"seed": seed})
    check_outputs(model_out, history_out, metrics_out)
    if prepared_task(DATA_DIR) == DETECTION:
        train_detection_teacher(p, seed, name, model_out, history_out, metrics_out)
        return
    weights = read_weights(p.init) if p.init else None
    data = load_prepared(DATA_DIR)
    launch(train.nproc if p.mode == "train" else 1, train.device, "teacher.train.nproc")
    if p.mode == "import":
        model, spec = import_model(weights, p.model, data.meta)
        history, m = [], supervised_metrics(model, data, NAME, [], seconds=0.0)
    else:
        init = partial(load_into, weights=weights) if weights else None
        with live_progress(f"dvclive/{name}", name) as on_epoch:
            model, spec, history, m = train_supervised(
                p.model, train, data, name=name, init=init, params_key="teacher.train",
                on_epoch=on_epoch)
    provenance = {"mode": p.mode, "init": p.init} if p.init else {}
    if seed is not None:
        provenance["ensemble_seed"] = seed
    if is_main_process():  # every rank holds the same model; other ranks print nothing
        with commit_outputs() as out:
            write_model_file(out.file(model_out), model, spec, role=NAME, **provenance)
            out.csv(history_out, history, fieldnames=None if history else HISTORY_COLUMNS)
            out.json(metrics_out, m)
            out.adopt(f"dvclive/{name}")  # the run's live progress (training.live)
    print(summary_line(name, spec, m), "->", model_out)
    finish()


def train_detection_teacher(p: TeacherParams, seed: int | None, name: str, model_out: str,
                            history_out: str, metrics_out: str) -> None:
    """``prepare.task: detection``: an FCOS teacher trained on the prepared boxes, its backbone
    the trunk of ``teacher.model``'s classifier, initialised from ``teacher.init`` if set (the
    classifier's weights: e.g. ImageNet-pretrained; nets.detectors)."""
    if p.mode != "train" or seed is not None:
        raise ShrinkflowError("teacher.mode import and ensemble members are classification only "
                              "so far; for detection expected mode: train and ensemble_seeds: []")
    weights = read_weights(p.init) if p.init else None  # a bad file fails before any work
    init = partial(load_into, weights=weights, name=name) if weights else None
    with live_progress(f"dvclive/{name}", name) as on_epoch:
        model, spec, history, m = train_detector(
            p.model, p.train, DATA_DIR, name, "teacher.train", "teacher.model", on_epoch,
            init=init)
    with commit_outputs() as out:
        write_model_file(out.file(model_out), model, spec, role=NAME,
                         **({"mode": p.mode, "init": p.init} if p.init else {}))
        out.csv(history_out, history)
        out.json(metrics_out, m)
        out.adopt(f"dvclive/{name}")
    print(f"[{name}] {detector_label(spec)} {m[f'{name}_params']:,} params: test mAP "
          f"{m[f'{name}_test_map']:.3f} "
          f"(mAP@.5 {m[f'{name}_test_map_50']:.3f}) in {m[f'{name}_train_seconds']:.1f}s ->",
          model_out)


if __name__ == "__main__":
    run_stage(main)
