"""teacher_ensemble: the ensemble's own accuracy, the reference every accuracy drop is taken from.

With extra members (``teacher.ensemble_seeds``), metrics/teacher_ensemble.json holds the
ensemble's val and test accuracy (mean of the members' probabilities, T = 1), the member count
and the gain over the mean member; report and select then measure every model's drop against
``teacher_ensemble_test_acc``. Each member's own accuracy is in metrics/teacher.json and
metrics/teacher_SEED.json. With one teacher the file is ``{}``: no model is loaded and no key
is added, so a single-teacher pipeline keeps exactly its metrics (the teacher is the reference).
"""

from shrinkflow.compress.teacher_ensemble import (
    check_teacher_fits_data,
    ensemble_metrics,
    load_teacher,
    teacher_files,
)
from shrinkflow.core.errors import run_stage
from shrinkflow.core.outputs import check_outputs, commit_outputs, require_inputs
from shrinkflow.data.prepared import load_prepared
from shrinkflow.params.load import load_section
from shrinkflow.params.teacher import TeacherParams

DATA_DIR = "data/prepared"
TEACHER = "models/teacher.pt"
MEMBERS_DIR = "models/teachers"  # extra ensemble members (train_teacher_member@SEED)
METRICS_OUT = "metrics/teacher_ensemble.json"


def main() -> None:
    seeds = list(load_section(TeacherParams).ensemble_seeds)
    teachers = teacher_files(TEACHER, MEMBERS_DIR, seeds)
    check_outputs(METRICS_OUT)
    metrics: dict = {}
    if len(teachers) > 1:
        require_inputs("teacher_ensemble", {f"{DATA_DIR}/meta.json": "prepare", **teachers})
        data = load_prepared(DATA_DIR)
        ensemble, payloads = load_teacher(list(teachers), T=1.0)
        for path, payload in zip(teachers, payloads, strict=True):
            check_teacher_fits_data(payload["spec"], data.meta, path)
        metrics = ensemble_metrics(list(ensemble.members), data.test, data.val, seeds)
    with commit_outputs() as out:
        out.json(METRICS_OUT, metrics)
    if metrics:
        print(f"[teacher_ensemble] {metrics['teacher_ensemble_members']} members: test acc "
              f"{metrics['teacher_ensemble_test_acc']:.2%} (mean member "
              f"{metrics['teacher_ensemble_mean_member_test_acc']:.2%}, "
              f"{metrics['teacher_ensemble_gain_points']:+.2f} pts) -> {METRICS_OUT}")
    else:
        print(f"[teacher_ensemble] one teacher (teacher.ensemble_seeds: []): nothing to "
              f"evaluate -> {METRICS_OUT} {{}}")


if __name__ == "__main__":
    run_stage(main)
