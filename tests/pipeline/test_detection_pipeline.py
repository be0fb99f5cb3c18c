"""Detection through DVC, as far as the pipeline runs it: `dvc repro distill` on the built-in
scenes prepares them, trains an FCOS teacher, the scratch control and the distilled student, and
reports the KD gain in mAP points; `evaluate@student` measures it again; `export_onnx@student`
exports it with NMS inside, and
shrinkflow-predict draws its boxes from the ONNX file; the stages that do not know detection
yet stop in one line that names prepare.task, and the models stay."""

from __future__ import annotations

import json
import sys

import pytest
from PIL import Image
from pipeline_repo import dvc, make_repo, run

from shrinkflow.data.prepared_boxes import load_box_split
from shrinkflow.model_files.pt import load_model

DETECTION = {"prepare": {"task": "detection", "source": "scenes", "image_size": 32,
                         "scenes": {"train": 32, "val": 8, "test": 8, "max_digits": 2}},
             "teacher": {"model": {"widths": [4, 8], "depth": 1},
                         "train": {"epochs": 1, "batch_size": 16}},
             "distill": {"student": {"widths": [2, 4], "depth": 1}, "alpha": 0.2,
                         "train": {"epochs": 1, "batch_size": 16}}}


@pytest.mark.slow
def test_dvc_repro_prepares_scenes_trains_and_distils_a_detector(tmp_path):
    repo = make_repo(tmp_path / "repo", DETECTION)
    out = dvc(repo, "repro", "distill").stdout
    for stage in ("prepare", "train_teacher", "train_student_scratch", "distill"):
        assert f"Running stage '{stage}'" in out
    assert "(scenes, detection)" in out and "kd gain" in out
    teacher, payload = load_model(repo / "models" / "teacher.pt", role="teacher")
    student, _ = load_model(repo / "models" / "student.pt", role="student")
    assert payload["spec"]["detector"] == "fcos" and type(student).__name__ == "FCOS"
    m = json.loads((repo / "metrics" / "distill.json").read_text())
    scratch = json.loads((repo / "metrics" / "student_scratch.json").read_text())
    assert m["distill_scratch_test_map"] == scratch["student_scratch_test_map"]
    assert m["kd_gain_map_points"] == pytest.approx(
        100 * (m["student_test_map"] - scratch["student_scratch_test_map"]), abs=1e-3)
    assert m["distill_params_ratio"] > 1

    out = dvc(repo, "repro", "export_onnx@student", "evaluate@student").stdout
    assert "with NMS): same boxes on" in out
    evaluated = json.loads((repo / "metrics" / "eval_student.json").read_text())
    assert evaluated["student_map"] == m["student_test_map"]  # the stage and distill agree
    assert (repo / "metrics" / "per_class_student.csv").read_text().startswith("class,ap,")
    exported = json.loads((repo / "metrics" / "export_student.json").read_text())
    assert exported["student_onnx_agreement"] >= 0.98
    drawn = repo / "drawn"
    scene = repo / "scene.png"
    test, _ = load_box_split(repo / "data" / "prepared", "test")
    Image.fromarray(test.images[0][0]).save(scene)
    shown = run(repo, sys.executable, "-m", "shrinkflow.cli.predict", "models/student.onnx",
                "scene.png", "--json", "--min-score", "0", "--draw", "drawn").stdout
    assert json.loads(shown)["file"] == "scene.png" and (drawn / "scene.png").is_file()

    before = {f: (repo / "models" / f).read_bytes() for f in ("teacher.pt", "student.pt")}
    failed = dvc(repo, "repro", "prune", check=False)
    assert failed.returncode != 0
    assert "holds detection data (prepare.task: detection); this stage reads classification" \
        in failed.stderr + failed.stdout
    assert {f: (repo / "models" / f).read_bytes() for f in before} == before
    assert "up to date" in dvc(repo, "status", "distill").stdout  # nothing else reran
