"""End to end: the real dvc.yaml on a copy of the project, with tiny params.

The session's reproduced repo (conftest.reproduced_template) is read as it is; each test that
changes something gets its own copy (`reproduced_repo`) and changes one thing, so no test
depends on another one's changes.
"""

import json
import os

import numpy as np
import onnxruntime as ort
import pytest
import torch
import yaml
from pipeline_repo import dvc, pipeline_stages, ran_stages, set_params

from shrinkflow.model_files.pt import load_model

pytestmark = pytest.mark.slow

ALL = set(pipeline_stages())
MODELS = sorted(name.removeprefix("evaluate@") for name in ALL if name.startswith("evaluate@"))
EVALUATE = {f"evaluate@{m}" for m in MODELS}
MODEL_FILES = {m: next(d for d in pipeline_stages()[f"evaluate@{m}"]["deps"]
                       if str(d).startswith("models/")) for m in MODELS}


def test_first_repro_runs_every_stage(reproduced_template):
    assert ran_stages(reproduced_template.first_repro) == ALL, reproduced_template.first_repro
    assert (reproduced_template.path / "reports/summary.md").is_file()


def recomputed_accuracy(path, x: np.ndarray, y: np.ndarray) -> float:
    """Accuracy from the model file alone: torch for fp32 .pt files, onnxruntime for ONNX."""
    images = x.astype(np.float32) / 255
    if path.suffix == ".onnx":
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        (logits,) = session.run(None, {session.get_inputs()[0].name: images})
    else:
        model, _ = load_model(path)
        with torch.no_grad():
            logits = model(torch.from_numpy(images)).numpy()
    return float((logits.argmax(1) == y).mean())


def test_evaluate_metrics_match_an_independent_recomputation(reproduced_template):
    """Each evaluate@ metric file agrees with accuracy, parameter count and size recomputed here
    from the model file and the prepared test split, without the evaluate stage's code."""
    repo = reproduced_template.path
    meta = json.loads((repo / "data/prepared/meta.json").read_text())
    x = np.load(repo / "data/prepared/test_x.npy")
    y = np.load(repo / "data/prepared/test_y.npy")
    accs = {}
    for model in MODELS:
        path = repo / MODEL_FILES[model]
        metrics = json.loads((repo / f"metrics/eval_{model}.json").read_text())
        accs[model] = metrics[f"{model}_acc"]
        assert metrics[f"{model}_file_bytes"] == os.path.getsize(path)
        if is_torch_int8(path):
            continue  # only the package's own code rebuilds it: checked against its source below
        # batch sizes differ from evaluate's, which may flip one borderline image
        assert accs[model] == pytest.approx(recomputed_accuracy(path, x, y),
                                            abs=1 / len(y) + 1e-6), model
    # the tiny students train for one epoch (about 2x chance); the teacher learns for real
    assert accs["teacher"] > 3 / meta["num_classes"]
    quantized_source = yaml.safe_load((repo / "params.yaml").read_text())["quantize"]["input"]
    for model in MODELS:
        if is_torch_int8(repo / MODEL_FILES[model]):  # int8 keeps its fp32 source's accuracy
            assert accs[model] == pytest.approx(accs[quantized_source], abs=0.1), model
    teacher, _ = load_model(repo / MODEL_FILES["teacher"])
    teacher_metrics = json.loads((repo / "metrics/teacher.json").read_text())
    assert teacher_metrics["teacher_params"] == sum(p.numel() for p in teacher.parameters())


def is_torch_int8(path) -> bool:
    return path.suffix == ".pt" and bool(
        torch.load(path, weights_only=True)["meta"].get("quantized"))


def test_a_copy_is_up_to_date(reproduced_repo):
    result = dvc(reproduced_repo, "repro")
    assert ran_stages(result.stdout) == set(), result.stdout
    assert "up to date" in dvc(reproduced_repo, "status").stdout


def invalidated(repo) -> dict[str, object]:
    """The stages whose own deps or params changed, as `dvc status` sees them."""
    return json.loads(dvc(repo, "status", "--json").stdout or "{}")


# Which stages a params change invalidates, exactly, in the order of the stage table
# (docs/index.md). DVC then reruns those and whatever their new outputs change downstream;
# test_experiments runs such reruns for real (a distill experiment and a prune.ratio sweep) and
# checks nothing upstream runs.
@pytest.mark.parametrize(("change", "expected"), [
    ({"evaluate": {"batch_size": 7}}, EVALUATE),
    ({"distill": {"T": 2.5}}, {"distill"}),  # never the scratch control
    ({"distill": {"train": {"epochs": 2}}}, {"distill", "train_student_scratch"}),  # same budget
    ({"prune": {"ratio": 0.3}}, {"prune"}),
    ({"quantize": {"calibration_method": "percentile"}}, {"quantize"}),
    ({"teacher": {"train": {"lr": 0.01}}}, {"train_teacher"}),
    # a new ensemble member: its own new stage and the stages that read the members (quantize
    # for its qat mode: DVC deps cannot depend on a param's value), never member 0
    ({"teacher": {"ensemble_seeds": [7]}},
     {"train_teacher_member@7", "teacher_ensemble", "distill", "prune", "quantize"}),
], ids=["evaluate", "distill.T", "distill.train", "prune.ratio", "quantize", "teacher",
        "teacher.ensemble_seeds"])
def test_a_params_change_invalidates_only_the_stages_that_read_it(reproduced_repo, change,
                                                                  expected):
    set_params(reproduced_repo, change)
    assert set(invalidated(reproduced_repo)) == expected


def test_bad_param_fails_before_touching_outputs(reproduced_repo):
    before = (reproduced_repo / "models/teacher.pt").read_bytes()
    set_params(reproduced_repo, {"teacher": {"model": {"arch": "vgg"}}})
    result = dvc(reproduced_repo, "repro", "train_teacher", check=False)
    assert result.returncode != 0
    assert "teacher.model.arch" in result.stdout + result.stderr
    assert (reproduced_repo / "models/teacher.pt").read_bytes() == before
