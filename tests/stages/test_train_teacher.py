"""stages/train_teacher.py run in this process: import mode, and the seed of an extra ensemble
member. (Two processes under torchrun: unit/training/test_distributed.py.)"""

from __future__ import annotations

import json
import sys

import pytest
import torch
import yaml
from pipeline_repo import ROOT, load_stage, run_stage_main, shipped_params
from prepared_files import write_prepared_dir

from shrinkflow.core.errors import ShrinkflowError
from shrinkflow.measure.metrics import accuracy
from shrinkflow.model_files.pt import load_model, save_model
from shrinkflow.nets.zoo import build_model, make_spec
from shrinkflow.params.common import ModelSpec
from shrinkflow.training.loop import predict

STAGE = ROOT / "stages" / "train_teacher.py"


def test_stage_imports_a_model(tmp_path, tiny_data, monkeypatch):
    """train_teacher in import mode: teacher.pt, metrics and history as a trained teacher has."""
    meta = write_prepared_dir(tmp_path / "data" / "prepared", tiny_data)
    torch.manual_seed(0)
    spec = make_spec(ModelSpec(widths=[4, 8]), 1, 4, meta["mean"], meta["std"])
    source = build_model(spec).eval()
    save_model(tmp_path / "data" / "raw" / "teacher.pt", source, spec)
    params = shipped_params({"teacher": {"mode": "import", "init": "data/raw/teacher.pt"}})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["train_teacher.py"])
    run_stage_main(STAGE)
    x, y = tiny_data.test
    vx, vy = tiny_data.val

    teacher, payload = load_model(tmp_path / "models" / "teacher.pt")
    assert payload["spec"] == spec and payload["meta"] == {"role": "teacher", "mode": "import",
                                                           "init": "data/raw/teacher.pt"}
    assert torch.equal(predict(teacher, x), predict(source, x))
    metrics = json.loads((tmp_path / "metrics" / "teacher.json").read_text())
    assert set(metrics) == {"teacher_params", "teacher_macs", "teacher_val_acc",
                            "teacher_test_acc", "teacher_train_seconds"}
    assert metrics["teacher_test_acc"] == pytest.approx(
        accuracy(predict(source, x), y), abs=1e-6)
    assert metrics["teacher_val_acc"] == pytest.approx(
        accuracy(predict(source, vx), vy), abs=1e-6)
    assert metrics["teacher_train_seconds"] == 0
    header = (tmp_path / "metrics" / "history_teacher.csv").read_text().splitlines()
    assert header == ["epoch,train_loss,train_acc,val_loss,val_acc,lr"]


def test_train_teacher_takes_only_a_listed_seed():
    stage = load_stage(STAGE)
    assert stage.member_seed([], [1, 2]) is None  # member 0, the teacher as before
    assert stage.member_seed(["2"], [1, 2]) == 2
    for argv in (["3"], ["x"], ["1", "2"]):
        with pytest.raises(ShrinkflowError, match=r"SEED one of teacher\.ensemble_seeds \[1, 2\]"):
            stage.member_seed(argv, [1, 2])


DETECTION = {"prepare": {"task": "detection", "source": "scenes", "image_size": 32,
                         "scenes": {"train": 32, "val": 8, "test": 8, "max_digits": 1}},
             "teacher": {"model": {"widths": [4, 8], "depth": 1},
                         "train": {"epochs": 1, "batch_size": 16}}}


def test_on_detection_data_the_stage_trains_an_fcos_teacher(tmp_path, monkeypatch):
    from shrinkflow.data.prepare_detection import read_detection, write_detection
    from shrinkflow.params.prepare import PrepareParams

    params = shipped_params(DETECTION)
    write_detection(tmp_path / "data" / "prepared",
                    read_detection(PrepareParams(**params["prepare"])), "scenes")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["train_teacher.py"])
    run_stage_main(STAGE)
    model, payload = load_model(tmp_path / "models" / "teacher.pt", role="teacher")
    assert type(model).__name__ == "FCOS" and payload["spec"]["task"] == "detection"
    metrics = json.loads((tmp_path / "metrics" / "teacher.json").read_text())
    assert {"teacher_test_map", "teacher_test_map_50", "teacher_val_map"} <= set(metrics)
    header = (tmp_path / "metrics" / "history_teacher.csv").read_text().splitlines()[0]
    assert header.startswith("epoch,train_loss,") and "val_map" in header

    params["teacher"]["ensemble_seeds"] = [1]  # not for detection yet: one line, no file
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.setattr(sys, "argv", ["train_teacher.py", "1"])
    with pytest.raises(ShrinkflowError, match=r"classification only so far; for detection "
                                              r"expected mode: train"):
        run_stage_main(STAGE)
    assert not (tmp_path / "models" / "teachers" / "teacher_1.pt").exists()


def test_on_detection_data_teacher_init_loads_a_classifiers_weights_into_the_backbone(
        tmp_path, monkeypatch, capsys):
    """teacher.init: a classifier file of teacher.model's network (here the cnn's, any class
    count) becomes the detector's backbone before training; its head is left out."""
    from shrinkflow.data.prepare_detection import read_detection, write_detection
    from shrinkflow.params.prepare import PrepareParams

    params = shipped_params(DETECTION)
    params["teacher"]["train"]["lr"] = 1e-9  # one epoch that leaves the weights as loaded
    write_detection(tmp_path / "data" / "prepared",
                    read_detection(PrepareParams(**params["prepare"])), "scenes")
    torch.manual_seed(1)
    spec = make_spec(ModelSpec(widths=[4, 8], depth=1), 1, 7, [0.5], [0.5])
    source = build_model(spec)
    save_model(tmp_path / "data" / "raw" / "classifier.pt", source, spec)
    params["teacher"]["init"] = "data/raw/classifier.pt"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["train_teacher.py"])
    run_stage_main(STAGE)
    assert "init from data/raw/classifier.pt" in capsys.readouterr().out
    model, payload = load_model(tmp_path / "models" / "teacher.pt", role="teacher")
    assert payload["meta"]["init"] == "data/raw/classifier.pt"
    ours, theirs = model.backbone.features[0].weight, source.body.features[0].weight
    assert torch.allclose(ours, theirs, atol=1e-6)
