"""Detection through DVC, as far as the pipeline runs it: `dvc repro train_teacher` on the
built-in scenes prepares them and trains an FCOS teacher; the stages that do not know detection
yet stop in one line that names prepare.task, and the teacher stays."""

from __future__ import annotations

import json

import pytest
from pipeline_repo import dvc, make_repo

from shrinkflow.model_files.pt import load_model

DETECTION = {"prepare": {"task": "detection", "source": "scenes", "image_size": 32,
                         "scenes": {"train": 32, "val": 8, "test": 8, "max_digits": 2}},
             "teacher": {"model": {"widths": [4, 8], "depth": 1},
                         "train": {"epochs": 1, "batch_size": 16}}}


@pytest.mark.slow
def test_dvc_repro_prepares_scenes_and_trains_a_detector(tmp_path):
    repo = make_repo(tmp_path / "repo", DETECTION)
    out = dvc(repo, "repro", "train_teacher").stdout
    assert "Running stage 'prepare'" in out and "Running stage 'train_teacher'" in out
    assert "(scenes, detection)" in out and "test mAP" in out
    model, payload = load_model(repo / "models" / "teacher.pt", role="teacher")
    assert payload["spec"]["detector"] == "fcos"
    metrics = json.loads((repo / "metrics" / "teacher.json").read_text())
    assert 0 <= metrics["teacher_test_map"] <= 1

    before = (repo / "models" / "teacher.pt").read_bytes()
    failed = dvc(repo, "repro", "train_student_scratch", check=False)
    assert failed.returncode != 0
    assert "holds detection data (prepare.task: detection); this stage reads classification" \
        in failed.stderr + failed.stdout
    assert (repo / "models" / "teacher.pt").read_bytes() == before
    assert "up to date" in dvc(repo, "status", "train_teacher").stdout  # nothing else reran
