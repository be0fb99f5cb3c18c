"""A photo folder end to end at 224 px: prepare (shorter side + centre crop), train a
mobilenet_v3_small teacher with photo augmentation for one step, export it to ONNX, ship it with
its card, and predict the original JPEGs through the card's resize."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from pipeline_repo import run_stage_main, shipped_params

from shrinkflow.cli.predict import cli
from shrinkflow.data.images import CARD_NAMES, read_image
from shrinkflow.model_files.card import make_card, write_model_card
from shrinkflow.model_files.open import open_model

STAGES = Path(__file__).resolve().parents[2] / "stages"
SIZE = 224


def _photos(root: Path, per_class: int = 8) -> list[Path]:
    """Two classes told apart by colour, in landscape and portrait shapes of various sizes."""
    rng = np.random.default_rng(0)
    files = []
    for label, base in enumerate(([200, 60, 40], [40, 80, 200])):
        for i in range(per_class):
            w, h = (300 + 20 * i, 240) if i % 2 else (230, 320 + 10 * i)
            pixels = np.clip(np.array(base) + rng.normal(0, 25, (h, w, 3)), 0, 255)
            path = root / f"class{label}" / f"{i:02d}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels.astype(np.uint8)).save(path, quality=90)
            files.append(path)
    return files


@pytest.mark.slow
def test_photos_prepared_trained_and_predicted_at_224(tmp_path, monkeypatch, capsys):
    files = _photos(tmp_path / "photos")
    train = {"epochs": 1, "batch_size": 8, "max_batches": 1, "augment": "resized_crop_flip",
             "lr": 0.01}
    params = shipped_params({
        "prepare": {"source": "imagefolder", "path": str(tmp_path / "photos"),
                    "image_size": SIZE, "resize": "crop", "channels": 3},
        "teacher": {"model": {"arch": "mobilenet_v3_small", "widths": [8]}, "train": train}})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)
    run_stage_main(STAGES / "prepare.py")
    meta = json.loads((tmp_path / "data/prepared/meta.json").read_text())
    assert meta["shape"] == [3, SIZE, SIZE] and meta["resize"] == "crop"
    assert sum(meta["counts"].values()) == len(files)

    monkeypatch.setattr(sys, "argv", ["train_teacher.py"])
    run_stage_main(STAGES / "train_teacher.py")
    payload = torch.load(tmp_path / "models/teacher.pt", weights_only=True)
    assert payload["spec"]["arch"] == "mobilenet_v3_small"
    assert payload["spec"]["stem"] == "standard"  # 224 px: torchvision's own stem
    monkeypatch.setattr(sys, "argv", ["export_onnx.py", "teacher"])
    run_stage_main(STAGES / "export_onnx.py")
    parity = json.loads((tmp_path / "metrics/export_teacher.json").read_text())
    assert parity["teacher_onnx_agreement"] == 1.0

    card = make_card(
        model="teacher_onnx", made_from="models/teacher.onnx", file_format="onnx",
        runtime="onnxruntime", precision="fp32", classes=meta["classes"],
        input_shape=meta["shape"], mean=meta["mean"], std=meta["std"], accuracy=0.5,
        teacher_accuracy=0.5, drop_points=0.0, test_images=2, data={}, latency={}, size={},
        pipeline={}, resize=CARD_NAMES[meta["resize"]])
    final = tmp_path / "final" / "model.onnx"
    final.parent.mkdir()
    write_model_card(tmp_path / "models/teacher.onnx", final, card)
    capsys.readouterr()
    cli([str(final), str(tmp_path / "photos"), "--json", "--top", "2"])
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [Path(r["file"]) for r in rows] == sorted(files)

    # the same numbers as the PyTorch teacher on the same crops
    teacher = open_model(tmp_path / "models/teacher.pt")
    images = torch.from_numpy(np.stack([read_image(f, 3, SIZE, SIZE, "crop")
                                        for f in sorted(files)]))
    probs = torch.softmax(teacher.predict(images), 1)
    for row, p in zip(rows, probs, strict=True):
        for top in row["top"]:
            assert top["prob"] == pytest.approx(p[top["index"]].item(), abs=1e-4)
