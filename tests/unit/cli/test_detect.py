"""shrinkflow-predict with a detector (shrinkflow.cli.detect): boxes in each image's own pixels,
as text or JSON, drawn with --draw, and what it refuses in one line.

The detector is an untrained FCOS whose class bias is raised so that it reports boxes: what is
tested is the command around the model (scaling, output, drawing), not what it learned
(tests/unit/training/test_detection_loop.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from deploy_env import SITECUSTOMIZE, env_with, run_predict
from PIL import Image

from shrinkflow.cli.predict import cli
from shrinkflow.data.images import read_image
from shrinkflow.model_files.pt import save_model
from shrinkflow.nets.detectors import build_detector, detector_spec
from shrinkflow.params.common import ModelSpec

SIDE = 32


@pytest.fixture(scope="module")
def detector(tmp_path_factory):
    """(model file, the model, a 64x32 image file) for the tests to share."""
    folder = tmp_path_factory.mktemp("detector")
    meta = {"shape": [1, SIDE, SIDE], "num_classes": 3, "mean": [0.2], "std": [0.3],
            "classes": ["ring", "bar", "dot"]}
    spec = detector_spec(ModelSpec(widths=[4, 8], depth=1), meta, "teacher.model")
    torch.manual_seed(0)
    model = build_detector(spec)
    with torch.no_grad():
        model.head.classification_head.cls_logits.bias.fill_(3.0)  # every point scores ~0.95
    save_model(folder / "detector.pt", model, spec, role="teacher")
    pixels = (np.random.default_rng(0).random((32, 64)) * 255).astype(np.uint8)  # w 64, h 32
    Image.fromarray(pixels, "L").save(folder / "wide.png")
    return folder / "detector.pt", model.eval(), folder / "wide.png"


def run(capsys, *argv: str) -> tuple[int, str, str]:
    """The command's exit code (0 when it returns), stdout and stderr."""
    try:
        cli([str(a) for a in argv])
        code = 0
    except SystemExit as done:
        code = done.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_boxes_are_in_the_images_own_pixels(detector, capsys):
    model_file, model, image = detector
    code, out, _ = run(capsys, model_file, image, "--json", "--min-score", "0.5")
    assert code == 0
    result = json.loads(out)
    assert (result["file"], result["width"], result["height"]) == (str(image), 64, 32)
    squashed = torch.from_numpy(read_image(image, 1, SIDE, SIDE).astype(np.float32) / 255)
    with torch.no_grad():
        raw = model([squashed])[0]
    keep = raw["scores"] >= 0.5
    assert len(result["boxes"]) == int(keep.sum()) > 0
    first = result["boxes"][0]
    expected = raw["boxes"][keep][0].numpy() * np.array([2, 1, 2, 1])  # 64x32 from 32x32
    np.testing.assert_allclose(first["box"], expected, atol=0.06)
    assert first["class"] == ["ring", "bar", "dot"][first["index"]]
    assert first["score"] == pytest.approx(float(raw["scores"][keep][0]), abs=1e-4)


def test_text_lists_each_files_boxes_and_draw_writes_them(detector, capsys, tmp_path):
    model_file, _, image = detector
    code, out, _ = run(capsys, model_file, image, "--draw", tmp_path / "drawn")
    assert code == 0 and out.startswith(f"{image}: ") and "box(es): " in out
    drawn = np.asarray(Image.open(tmp_path / "drawn" / "wide.png"))
    original = np.asarray(Image.open(image).convert("RGB"))
    assert drawn.shape == original.shape
    coloured = drawn[..., 0] != drawn[..., 1]  # the grey image has none: only box lines do
    assert coloured.any() and not (original[..., 0] != original[..., 1]).any()


def test_what_it_refuses_is_one_line(detector, capsys, tmp_path):
    model_file, _, image = detector
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for folder in ("a", "b"):
        Image.open(image).save(tmp_path / folder / "same.png")
    code, _, err = run(capsys, model_file, tmp_path / "a", tmp_path / "b", "--draw",
                       tmp_path / "out")
    assert code == 2 and "several images are named 'same'" in err
    assert not (tmp_path / "out").exists()
    code, _, err = run(capsys, model_file, image, "--min-score", "2")
    assert code == 2 and "--min-score 2.0: expected a score in 0..1" in err


def test_the_onnx_detector_gives_the_same_boxes_without_torch(detector, capsys, tmp_path):
    from shrinkflow.model_files.export_detector import export_detector
    from shrinkflow.model_files.pt import load_model

    model_file, _, image = detector
    model, payload = load_model(model_file)
    export_detector(model, payload["spec"], tmp_path / "detector.onnx")
    (tmp_path / "sitecustomize.py").write_text(SITECUSTOMIZE)  # torch, onnx... fail to import
    done = run_predict(str(tmp_path / "detector.onnx"), str(image), "--json",
                       env=env_with(tmp_path))
    assert done.returncode == 0, done.stderr
    onnx_boxes = json.loads(done.stdout)["boxes"]
    torch_boxes = json.loads(run(capsys, model_file, image, "--json")[1])["boxes"]
    assert [b["index"] for b in onnx_boxes] == [b["index"] for b in torch_boxes]
    np.testing.assert_allclose([b["box"] for b in onnx_boxes], [b["box"] for b in torch_boxes],
                               atol=0.11)  # printed to 0.1 px
