"""The deploy command (shrinkflow.cli.predict), run from a model carrying its card (the card
itself: test_card.py).

One tiny model, trained for a few steps on the shared synthetic data, is saved as .pt, exported
to ONNX and given a card exactly as the select stage does (card.write_model_card). The test
split's images are written as PNGs; the command's predictions must equal open_model's (what the
evaluate stage computes) on the same images, in a subprocess, and once with every package outside
the minimal deploy set (onnxruntime, numpy, Pillow) failing to import.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from cards import tiny_card
from deploy_env import SITECUSTOMIZE, env_with, run_predict
from PIL import Image

from shrinkflow.cli.predict import cli
from shrinkflow.model_files.card import (
    write_model_card,
)
from shrinkflow.model_files.export_onnx import export_onnx
from shrinkflow.model_files.open import open_model
from shrinkflow.model_files.pt import save_model
from shrinkflow.nets.zoo import build_model, make_spec
from shrinkflow.params.common import ModelSpec

N_IMAGES = 12


@pytest.fixture(scope="module")
def deployed(tiny_data_shared, tmp_path_factory):
    """(folder, card, onnx with card, .pt with card, onnx without card, PNG files, test images)."""
    data = tiny_data_shared
    root = tmp_path_factory.mktemp("predict")
    torch.manual_seed(0)
    spec = make_spec(ModelSpec(widths=[4, 8], depth=1), 1, 4, data.meta["mean"], data.meta["std"])
    model = build_model(spec)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    x, y = data.train
    for _ in range(15):  # a few steps: predictions differ per image, so equality means something
        opt.zero_grad()
        F.cross_entropy(model(x.float() / 255), y).backward()
        opt.step()
    model.eval()
    plain_pt, plain_onnx = root / "plain.pt", root / "plain.onnx"
    save_model(plain_pt, model, spec, role="student")
    export_onnx(model, tuple(data.meta["shape"]), plain_onnx)
    card = tiny_card(data.meta)
    onnx_file, pt_file = root / "final" / "model.onnx", root / "final_pt" / "model.pt"
    for source, target in ((plain_onnx, onnx_file), (plain_pt, pt_file)):
        target.parent.mkdir()
        write_model_card(source, target, card)
    images = data.test[0][:N_IMAGES]
    pngs = []
    for i, img in enumerate(images.numpy()):
        pngs.append(root / "images" / f"img_{i:02d}.png")
        pngs[-1].parent.mkdir(exist_ok=True)
        Image.fromarray(img[0], mode="L").save(pngs[-1])
    return root, card, onnx_file, pt_file, plain_onnx, pngs, images


def expected_classes(model_file: Path, images: torch.Tensor, card: dict) -> list[str]:
    """What evaluate computes: open_model's logits, argmax, named by the card."""
    predicted = open_model(model_file).predict(images).argmax(1).tolist()
    return [card["classes"][i] for i in predicted]


def top1(stdout: str) -> dict[str, str]:
    rows = [json.loads(line) for line in stdout.splitlines()]
    return {Path(r["file"]).name: r["top"][0]["class"] for r in rows}


# --- predictions -------------------------------------------------------------------------------


def test_command_predicts_what_evaluate_predicts(deployed):
    _, card, onnx_file, _, _, pngs, images = deployed
    done = run_predict(str(onnx_file), str(pngs[0].parent), "--json")
    assert done.returncode == 0, done.stderr
    want = expected_classes(onnx_file, images, card)
    assert len(set(want)) > 1  # a model that says one class everywhere would prove nothing
    assert top1(done.stdout) == {p.name: c for p, c in zip(pngs, want, strict=True)}


def test_onnx_path_runs_without_torch_or_dvc(deployed, tmp_path):
    _, card, onnx_file, _, _, pngs, images = deployed
    (tmp_path / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = env_with(tmp_path)
    blocked = subprocess.run([sys.executable, "-c", "import torch"], env=env,
                             capture_output=True, text=True)
    assert blocked.returncode != 0 and "blocked by this test" in blocked.stderr
    done = run_predict(str(onnx_file), *map(str, pngs[:4]), "--json", env=env)
    assert done.returncode == 0, done.stderr
    want = expected_classes(onnx_file, images[:4], card)
    assert list(top1(done.stdout).values()) == want


def test_top_k_probabilities_are_the_softmax_of_the_logits(deployed, capsys):
    _, card, onnx_file, _, _, pngs, images = deployed
    cli([str(onnx_file), str(pngs[0]), str(pngs[1]), "--top", "2", "--json"])
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    probs = torch.softmax(open_model(onnx_file).predict(images[:2]), 1)
    for row, p in zip(rows, probs, strict=True):
        best = torch.topk(p, 2)
        assert [t["index"] for t in row["top"]] == best.indices.tolist()
        assert [t["class"] for t in row["top"]] == [card["classes"][i] for i in best.indices]
        assert [t["prob"] for t in row["top"]] == pytest.approx(best.values.tolist(), abs=1e-5)


def test_text_output_names_each_file_with_k_classes(deployed, capsys):
    _, card, onnx_file, _, _, pngs, _ = deployed
    cli([str(onnx_file), str(pngs[0]), "--top", "3"])
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"{pngs[0]}: ") and line.count(" | ") == 2
    assert all(name in card["classes"] for name in
               [part.rsplit(" ", 1)[0] for part in line.split(": ", 1)[1].split(" | ")])


def test_pt_model_gives_the_same_predictions(deployed, capsys):
    _, card, _, pt_file, _, pngs, images = deployed
    cli([str(pt_file), *map(str, pngs), "--json"])
    assert list(top1(capsys.readouterr().out).values()) == expected_classes(pt_file, images, card)


def test_colour_image_is_converted_for_a_grey_model(deployed, tmp_path, capsys):
    """Documented: a 1-channel model gets colour images converted to grey, as prepare did."""
    _, card, onnx_file, _, _, pngs, _ = deployed
    rgb = tmp_path / "rgb.png"
    Image.open(pngs[3]).convert("RGB").save(rgb)
    cli([str(onnx_file), str(rgb), "--json"])
    grey = torch.from_numpy(np.array(Image.open(rgb).convert("L")))[None, None]
    assert list(top1(capsys.readouterr().out).values()) == expected_classes(onnx_file, grey,
                                                                            card)


# --- bad input: one line naming the file, exit 2, nothing predicted -----------------------------


BAD_IMAGES = {
    "missing": (lambda p: None, "no such file or folder"),
    "not_an_image": (lambda p: p.write_text("not a picture\n"), "not a readable image"),
    "truncated": (lambda p: p.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20),
                  "not a readable image"),
    # the one image policy (data.images; CMYK and 16-bit are converted, tests/test_images.py)
    "float": (lambda p: Image.new("F", (8, 8)).save(p.with_suffix(".tif")), "mode F image"),
}


@pytest.mark.parametrize("case", sorted(BAD_IMAGES))
def test_bad_image_is_one_line_naming_it_before_any_prediction(deployed, tmp_path, capsys,
                                                               case):
    _, _, onnx_file, _, _, pngs, _ = deployed
    make, expected = BAD_IMAGES[case]
    path = tmp_path / f"{case}.png"
    make(path)
    if case == "float":
        path = path.with_suffix(".tif")
    with pytest.raises(SystemExit) as exit_:
        cli([str(onnx_file), str(pngs[0]), str(path)])  # a good image first: nothing printed
    out = capsys.readouterr()
    assert exit_.value.code == 2 and out.out == ""
    assert out.err.startswith(f"error: {path}: ") and out.err.count("\n") == 1
    assert expected in out.err


def test_bad_image_inside_a_folder_is_named(deployed, tmp_path, capsys):
    _, _, onnx_file, _, _, pngs, _ = deployed
    folder = tmp_path / "imgs"
    folder.mkdir()
    for p in pngs[:3]:
        (folder / p.name).write_bytes(p.read_bytes())
    (folder / "zz.png").write_text("oops")
    (folder / "notes.txt").write_text("not an image suffix: skipped")
    with pytest.raises(SystemExit):
        cli([str(onnx_file), str(folder)])
    out = capsys.readouterr()
    assert out.out == "" and out.err.startswith(f"error: {folder / 'zz.png'}: not a readable")


def test_model_without_card_is_one_line(deployed, capsys):
    _, _, _, _, plain_onnx, pngs, _ = deployed
    with pytest.raises(SystemExit) as exit_:
        cli([str(plain_onnx), str(pngs[0])])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1
    assert err.startswith(f"error: {plain_onnx}: no model card")


def test_pt_model_without_card_is_one_line(deployed, capsys):
    root, *_, pngs, _ = deployed
    with pytest.raises(SystemExit):
        cli([str(root / "plain.pt"), str(pngs[0])])
    err = capsys.readouterr().err
    assert err.startswith(f"error: {root / 'plain.pt'}: no model card") and err.count("\n") == 1


@pytest.mark.parametrize("name,expected", [("model.h5", "unknown model file type '.h5'"),
                                           ("missing.onnx", "model file not found"),
                                           ("damaged.onnx", "not a loadable ONNX model")])
def test_bad_model_file_is_one_line(deployed, tmp_path, capsys, name, expected):
    *_, pngs, _ = deployed
    model = tmp_path / name
    if name != "missing.onnx":
        model.write_bytes(b"not a model")
    with pytest.raises(SystemExit):
        cli([str(model), str(pngs[0])])
    err = capsys.readouterr().err
    assert err.startswith(f"error: {model}: {expected}") and err.count("\n") == 1


# Peak RSS allowed to predict on a hostile file: the process itself (torch and ONNX Runtime
# imported) peaked at 0.68 GB here (/usr/bin/time -v, 1 run); the same 1.8 KB file made the
# opener before this grow to 24 GB until the kernel killed it (issue 25).
HOSTILE_RSS_BYTES = 2 * 2**30


def test_hostile_pt_is_one_line_in_bounded_memory(deployed, tmp_path):
    """A 1.8 KB .pt whose spec asks for 16 x 16 convs of 4096 channels (38 billion parameters)
    and holds no tensors: one line naming the file, and the peak RSS of the process stays far
    below what building the network would take (it is built on the meta device only)."""
    _, card, *_, pngs, _ = deployed
    channels = card["input"]["channels"]
    spec = {"arch": "cnn", "widths": [4096] * 16, "depth": 16, "width_mult": 1.0,
            "in_channels": channels, "num_classes": len(card["classes"]),
            "mean": [0.5] * channels, "std": [0.25] * channels}
    hostile = tmp_path / "hostile.pt"
    torch.save({"format": "shrinkflow-model/1", "spec": spec, "state_dict": {},
                "meta": {"card": card}}, hostile)
    with open(tmp_path / "err", "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "shrinkflow.cli.predict", str(hostile),
                                 str(pngs[0])], env=env_with(), stdout=subprocess.DEVNULL,
                                stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own peak RSS
        proc.returncode = os.waitstatus_to_exitcode(status)
    lines = (tmp_path / "err").read_text().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"error: {hostile}: weights do not match its spec (cnn, widths "
                               "[4096, ")
    assert usage.ru_maxrss * 1024 < HOSTILE_RSS_BYTES  # ru_maxrss is in KiB on Linux


def test_card_of_another_model_is_refused(deployed, tmp_path, capsys):
    _, card, _, _, plain_onnx, pngs, _ = deployed
    wrong = tmp_path / "wrong.onnx"
    write_model_card(plain_onnx, wrong, {**card, "classes": ["a", "b"]})
    with pytest.raises(SystemExit):
        cli([str(wrong), str(pngs[0])])
    err = capsys.readouterr().err
    assert err.startswith(f"error: {wrong}: the model predicts 4 classes but its card names 2")


# --- the card ----------------------------------------------------------------------------------
