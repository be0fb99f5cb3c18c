"""The model card (shrinkflow.model_files.card): stored inside the model file and beside it,
byte-reproducible, checked in one line, and the pipeline commit it names."""

from __future__ import annotations

import os
import subprocess

import onnx
import pytest
import torch
from cards import tiny_card

from shrinkflow.core.errors import ShrinkflowError
from shrinkflow.model_files.card import (
    CARD_FILE,
    CARD_KEY,
    card_from_json,
    card_json,
    pipeline_commit,
    write_model_card,
)
from shrinkflow.model_files.export_onnx import export_onnx, read_metadata
from shrinkflow.model_files.open import open_model
from shrinkflow.model_files.pt import save_model
from shrinkflow.nets.zoo import build_model, make_spec
from shrinkflow.params.common import ModelSpec


@pytest.fixture(scope="module")
def carded(tiny_data_shared, tmp_path_factory):
    """(folder, card, onnx with card, .pt with card, onnx without card) of one tiny model."""
    meta = tiny_data_shared.meta
    root = tmp_path_factory.mktemp("card")
    torch.manual_seed(0)
    spec = make_spec(ModelSpec(widths=[4, 8], depth=1), 1, 4, meta["mean"], meta["std"])
    model = build_model(spec).eval()
    save_model(root / "plain.pt", model, spec, role="student")
    export_onnx(model, tuple(meta["shape"]), root / "plain.onnx")
    card = tiny_card(meta)
    write_model_card(root / "plain.onnx", root / "model.onnx", card)
    write_model_card(root / "plain.pt", root / "model.pt", card)
    return root, card, root / "model.onnx", root / "model.pt", root / "plain.onnx"


def test_card_inside_the_model_is_the_card_beside_it(carded, tmp_path):
    _, card, onnx_file, pt_file, plain_onnx = carded
    assert read_metadata(onnx_file)[CARD_KEY] == card_json(card)
    assert open_model(pt_file).meta["card"] == card
    # the model is untouched apart from the card: same graph and weights, other metadata kept
    with_card, plain = onnx.load(str(onnx_file)), onnx.load(str(plain_onnx))
    assert with_card.graph == plain.graph
    assert {k: v for k, v in read_metadata(onnx_file).items() if k != CARD_KEY} == \
        read_metadata(plain_onnx)
    (tmp_path / CARD_FILE).write_text(card_json(card))
    assert card_from_json((tmp_path / CARD_FILE).read_text(), CARD_FILE) == card


def test_same_card_same_bytes(carded, tmp_path):
    root, card, onnx_file, pt_file, plain_onnx = carded
    write_model_card(plain_onnx, tmp_path / "again.onnx", card)
    write_model_card(root / "plain.pt", tmp_path / "again.pt", card)
    assert (tmp_path / "again.onnx").read_bytes() == onnx_file.read_bytes()
    assert (tmp_path / "again.pt").read_bytes() == pt_file.read_bytes()


@pytest.mark.parametrize("change,expected", [
    ({"format": "other/1"}, "format 'other/1'"),
    ({"classes": []}, "'classes'"),
    ({"input": {"channels": 1, "height": 0, "width": 8}}, "'input'"),
])
def test_bad_card_is_one_line(tiny_data_shared, change, expected):
    card = tiny_card(tiny_data_shared.meta, **change)
    with pytest.raises(ShrinkflowError, match=expected) as err:
        card_from_json(card_json(card), "x/card.json")
    assert str(err.value).startswith("x/card.json: model card") and "\n" not in str(err.value)


def test_pipeline_commit_names_the_commit_and_modified_files(tmp_path):
    assert pipeline_commit(["src"], tmp_path) == {"commit": None, "modified": None}
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=tmp_path, env=env, check=True,
                              capture_output=True, text=True).stdout.strip()

    git("init", "-q")
    (tmp_path / "params.yaml").write_text("a: 1\n")
    (tmp_path / "other.txt").write_text("x\n")
    git("add", "-A")
    git("commit", "-qm", "one")
    head = git("rev-parse", "HEAD")
    assert pipeline_commit(["params.yaml"], tmp_path) == {"commit": head, "modified": []}
    (tmp_path / "params.yaml").write_text("a: 2\n")
    (tmp_path / "other.txt").write_text("y\n")  # not a pipeline file: not listed
    assert pipeline_commit(["params.yaml"], tmp_path) == {"commit": head,
                                                          "modified": ["params.yaml"]}
