"""Teachers users already have (shrinkflow.model_files.user_weights): fine-tune from local
weights, import a finished model.

Every weights file is created here (torchvision architectures with weights=None): nothing downloads.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch

from shrinkflow.core.errors import ShrinkflowError
from shrinkflow.measure.metrics import accuracy
from shrinkflow.model_files.pt import save_model
from shrinkflow.model_files.user_weights import import_model, load_into, read_weights
from shrinkflow.nets.zoo import build_model, make_spec
from shrinkflow.params.common import ModelSpec, TrainConfig
from shrinkflow.training.loop import predict, seed_everything, train_supervised

REPO = Path(__file__).resolve().parents[3]
RESNET = ModelSpec(arch="resnet18")
META = {"shape": [1, 8, 8], "num_classes": 4, "mean": [0.3], "std": [0.3]}


def spec_for(model_params: ModelSpec, meta: dict = META) -> dict:
    return make_spec(model_params, meta["shape"][0], meta["num_classes"], meta["mean"],
                     meta["std"])


@pytest.fixture(scope="module")
def imagenet_resnet18() -> dict[str, torch.Tensor]:
    """What a user saves from torchvision: 1000 classes, RGB 7x7 stem (random, not downloaded)."""
    from torchvision.models import resnet18  # here: its import is seconds of collection

    torch.manual_seed(123)
    return resnet18(weights=None).state_dict()


def save(tmp_path: Path, obj, name: str = "w.pt") -> Path:
    path = tmp_path / name
    torch.save(obj, path)
    return path


# --- fine-tune: mode train + init ----------------------------------------------------------------


def test_init_replaces_head_and_stem_and_copies_the_body(tmp_path, imagenet_resnet18, tiny_data):
    path = save(tmp_path, imagenet_resnet18)
    weights = read_weights(path)
    lines: list[str] = []
    # no training, only the init (params.yaml refuses 0 epochs; the loop accepts them)
    cfg = TrainConfig(seed=3).model_copy(update={"epochs": 0})
    model, spec, history, metrics = train_supervised(
        RESNET, cfg, tiny_data, "teacher",
        init=lambda m, s: load_into(m, s, weights, log=lines.append))
    body = model.body.state_dict()
    assert torch.equal(body["layer1.0.conv1.weight"], imagenet_resnet18["layer1.0.conv1.weight"])
    assert torch.equal(body["layer4.1.bn2.running_var"],
                       imagenet_resnet18["layer4.1.bn2.running_var"])
    assert body["fc.weight"].shape == (4, 512) and body["conv1.weight"].shape == (64, 1, 3, 3)
    # head and stem are what a fresh build with the same seed gives: initialised, not copied
    seed_everything(cfg.seed)
    fresh = build_model(spec).body.state_dict()
    for key in ("fc.weight", "fc.bias", "conv1.weight"):
        assert torch.equal(body[key], fresh[key])
    n = len(imagenet_resnet18)
    assert lines == [f"[teacher] init from {path}: {n - 3}/{n} tensors loaded; replaced head fc "
                     f"(1000 -> 4 classes); stem conv1 re-initialised (7x7x3 -> 3x3x1)"]
    assert history == [] and metrics["teacher_val_acc"] == pytest.approx(
        accuracy(predict(model, tiny_data.val[0]), tiny_data.val[1]), abs=1e-6)


def test_same_class_count_keeps_the_head(tmp_path, imagenet_resnet18):
    meta = dict(META, shape=[3, 8, 8], num_classes=1000, mean=[0.5] * 3, std=[0.2] * 3)
    spec = spec_for(RESNET, meta)
    model = build_model(spec)
    lines: list[str] = []
    load_into(model, spec, read_weights(save(tmp_path, imagenet_resnet18)), log=lines.append)
    assert torch.equal(model.body.fc.weight, imagenet_resnet18["fc.weight"])
    assert "replaced head" not in lines[0]
    assert "stem conv1 re-initialised (7x7x3 -> 3x3x3)" in lines[0]


@pytest.mark.parametrize("wrap", [
    lambda sd: {"state_dict": sd, "epoch": 7},
    lambda sd: {"model": {f"module.{k}": v for k, v in sd.items()}, "lr": 0.1},
], ids=["state_dict", "model+ddp_prefix"])
def test_wrapped_checkpoints_load_the_same_tensors(tmp_path, imagenet_resnet18, wrap):
    weights = read_weights(save(tmp_path, wrap(imagenet_resnet18)))
    assert weights.state_dict.keys() == imagenet_resnet18.keys()
    spec = spec_for(RESNET)
    model = build_model(spec)
    load_into(model, spec, weights, log=lambda _: None)
    assert torch.equal(model.body.layer3[1].conv2.weight,
                       imagenet_resnet18["layer3.1.conv2.weight"])


def test_weights_for_another_architecture_are_refused(tmp_path):
    from torchvision.models import mobilenet_v2

    torch.manual_seed(0)
    path = save(tmp_path, mobilenet_v2(weights=None, width_mult=0.25).state_dict(), "mnv2.pt")
    spec = spec_for(RESNET)
    with pytest.raises(ShrinkflowError) as err:
        load_into(build_model(spec), spec, read_weights(path))
    msg = str(err.value)
    assert msg.startswith(f"teacher.init = '{path}': looks like weights for another architecture")
    assert "0 of 119 tensors match resnet18" in msg and "\n" not in msg


def test_a_shrinkflow_model_fine_tunes_into_the_same_spec(tmp_path):
    torch.manual_seed(0)
    small = ModelSpec(widths=[4, 8])
    source_spec = spec_for(small, dict(META, num_classes=7))
    source = build_model(source_spec)
    save_model(tmp_path / "m.pt", source, source_spec)
    spec = spec_for(small)
    model = build_model(spec)
    lines: list[str] = []
    load_into(model, spec, read_weights(tmp_path / "m.pt"), log=lines.append)
    assert torch.equal(model.body.features[0].weight, source.body.features[0].weight)
    assert model.body.classifier.weight.shape == (4, 8)
    assert "replaced head classifier (7 -> 4 classes)" in lines[0]


# --- files that are not weights ------------------------------------------------------------------


@pytest.mark.parametrize("obj, expected", [
    ([torch.zeros(2)], "got list"),
    (torch.zeros(3), "got Tensor"),
    ({}, "got an empty mapping"),
    ({"epoch": 3, "conv1.weight": torch.zeros(1)}, "entry 'epoch' holds int"),
    ({"model": {"a": torch.zeros(1)}, "args": argparse.Namespace(lr=0.1)},
     "refuses (argparse.Namespace)"),
], ids=["list", "tensor", "empty", "non-tensor", "pickled-object"])
def test_not_a_state_dict_is_one_line_naming_the_file(tmp_path, obj, expected):
    path = save(tmp_path, obj)
    with pytest.raises(ShrinkflowError) as err:
        read_weights(path)
    msg = str(err.value)
    assert msg.startswith(f"teacher.init = '{path}': ") and expected in msg and "\n" not in msg


def test_missing_or_garbage_file(tmp_path):
    with pytest.raises(ShrinkflowError, match="file not found"):
        read_weights(tmp_path / "nope.pt")
    (tmp_path / "junk.pt").write_text("not a torch file")
    with pytest.raises(ShrinkflowError, match="not a readable torch.save file") as err:
        read_weights(tmp_path / "junk.pt")
    assert "\n" not in str(err.value)


# --- import ------------------------------------------------------------------------------------


def test_import_of_a_shrinkflow_model_gives_the_same_logits(tmp_path, tiny_data):
    torch.manual_seed(0)
    spec = spec_for(ModelSpec(widths=[4, 8]), dict(META, mean=[0.4], std=[0.2]))
    source = build_model(spec).eval()
    save_model(tmp_path / "m.pt", source, spec)
    # teacher.model is ignored for a shrinkflow file: its own spec is used as-is
    model, got_spec = import_model(read_weights(tmp_path / "m.pt"), RESNET, tiny_data.meta)
    assert got_spec == spec
    assert torch.equal(predict(model, tiny_data.test[0]), predict(source, tiny_data.test[0]))


def test_import_of_a_state_dict_uses_teacher_model_and_data_normalisation(tmp_path, tiny_data):
    torch.manual_seed(0)
    small = ModelSpec(widths=[4, 8])
    source = build_model(spec_for(small, tiny_data.meta)).eval()
    path = save(tmp_path, source.body.state_dict())
    model, spec = import_model(read_weights(path), small, tiny_data.meta)
    assert spec == spec_for(small, tiny_data.meta)
    assert torch.equal(predict(model, tiny_data.test[0]), predict(source, tiny_data.test[0]))


def test_import_with_another_class_count_names_both_counts(tmp_path, imagenet_resnet18):
    torch.manual_seed(0)
    spec7 = spec_for(ModelSpec(widths=[4, 8]), dict(META, num_classes=7))
    save_model(tmp_path / "m.pt", build_model(spec7), spec7)
    with pytest.raises(ShrinkflowError) as err:
        import_model(read_weights(tmp_path / "m.pt"), RESNET, META)
    assert f"'{tmp_path / 'm.pt'}'" in str(err.value)
    assert "predicts 7 classes but the prepared data has 4" in str(err.value)

    path = save(tmp_path, imagenet_resnet18)
    with pytest.raises(ShrinkflowError, match="predicts 1000 classes but the prepared data has 4"):
        import_model(read_weights(path), RESNET, META)


def test_import_refuses_a_state_dict_that_does_not_fit(tmp_path, imagenet_resnet18):
    rgb1000 = dict(META, shape=[3, 8, 8], num_classes=1000, mean=[0.5] * 3, std=[0.2] * 3)
    path = save(tmp_path, imagenet_resnet18)
    with pytest.raises(ShrinkflowError, match=r"stem conv1 is 7x7x3, .* is 3x3x3.*mode: train"):
        import_model(read_weights(path), RESNET, rgb1000)
    with pytest.raises(ShrinkflowError, match="takes 3 input channel.* images have 1"):
        import_model(read_weights(path), RESNET, dict(rgb1000, shape=[1, 8, 8], mean=[0.5],
                                                       std=[0.2]))
    body = build_model(spec_for(ModelSpec(widths=[4, 8]))).body.state_dict()
    del body["features.3.weight"]
    with pytest.raises(ShrinkflowError, match=r"not a complete cnn \[4, 8\] depth 2 state_dict "
                                              r"\(missing: features.3.weight\)"):
        import_model(read_weights(save(tmp_path, body, "cnn.pt")), ModelSpec(widths=[4, 8]), META)


# --- the stage, for real ----------------------------------------------------------------------


def test_import_checks_the_models_class_names_against_the_data():
    from shrinkflow.model_files.user_weights import check_class_names

    with pytest.raises(ShrinkflowError, match=r"^teacher\.init = 'm\.pt': class 1 is 'b' in the "
                                              r"model but 'c' in the prepared data"):
        check_class_names({"card": {"classes": ["a", "b", "c"]}}, {"classes": ["a", "c", "b"]},
                          "m.pt")
    with pytest.raises(ShrinkflowError, match=r"names 2 classes but the prepared data has 3"):
        check_class_names({"card": {"classes": ["a", "b"]}}, {"classes": ["a", "b", "c"]},
                          "m.pt")
    check_class_names({"role": "teacher"}, {"classes": ["a"]}, "m.pt")  # no names: nothing to check
