"""configs/ holds overlays: only the keys that differ from params.yaml, per data shape and
device, applied with `shrinkflow-config apply` (shrinkflow.cli.config)."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from shrinkflow.cli.config import apply_overlay, free_mapping
from shrinkflow.params.all_sections import SECTIONS
from shrinkflow.params.load import load_section

ROOT = Path(__file__).resolve().parents[2]
PARAMS = ROOT / "params.yaml"
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))
# shipped configs are named SHAPE-COLOUR-DEVICE; a user's own overlay (docs/data.md) need not be
NAMED = [c for c in CONFIGS if re.fullmatch(r"\d+x\d+-(gray|rgb)-(cpu|gpu)", c.stem)]


def leaves(tree: dict, prefix: str = "") -> dict[str, object]:
    """Dotted key -> value; a mapping of the user's own keys (ladder.rungs) is one value."""
    out = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        nested = isinstance(value, dict) and not free_mapping(dotted)
        out.update(leaves(value, dotted + ".") if nested else {dotted: value})
    return out


@pytest.fixture
def applied(tmp_path, monkeypatch):
    """A function: the params.yaml that `shrinkflow-config apply CONFIG` writes (in a copy)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # the GPU config's device

    def apply(config: Path) -> Path:
        params = tmp_path / f"{config.stem}.yaml"
        shutil.copy(PARAMS, params)
        apply_overlay(config, params)
        return params
    return apply


def test_the_three_shapes_and_devices_are_covered():
    names = {c.stem for c in NAMED}
    assert {"28x28-gray-cpu", "32x32-rgb-cpu", "32x32-rgb-gpu"} <= names


@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_config_holds_only_what_differs_from_params(config):
    shipped = leaves(yaml.safe_load(PARAMS.read_text()))
    overlay = leaves(yaml.safe_load(config.read_text()))
    assert overlay, f"{config.name} is empty"
    for key, value in overlay.items():
        assert key in shipped, f"{config.name}: {key} is not in params.yaml"
        assert value != shipped[key], f"{config.name}: {key} repeats params.yaml's {value!r}"


@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_applied_config_validates_and_keeps_params_comments(config, applied):
    params = applied(config)
    for schema in SECTIONS.values():
        load_section(schema, params)  # raises on a missing, unknown or invalid key
    old, new = PARAMS.read_text().splitlines(), params.read_text().splitlines()
    assert len(new) == len(old)  # values replaced in place: every comment line is still there
    assert sum(a != b for a, b in zip(old, new, strict=True)) == len(
        leaves(yaml.safe_load(config.read_text())))  # one line per overlay value, no more
    assert apply_overlay(config, params) == []  # applying it again changes nothing


@pytest.mark.parametrize("config", NAMED, ids=[c.stem for c in NAMED])
def test_config_matches_its_name(config, applied):
    params = applied(config)
    shape, colour, device = config.stem.split("-")
    prepare = load_section(SECTIONS["prepare"], params)
    # auto: the source's own test split (IDX t10k, CIFAR test), as published figures use
    assert prepare.split == "auto" and prepare.path.startswith("data/raw/")
    assert prepare.source in ("idx", "cifar", "imagefolder")
    assert prepare.channels == (1 if colour == "gray" else 3)
    if prepare.source == "imagefolder":
        assert f"{prepare.image_size}x{prepare.image_size}" == shape
    trains = [load_section(SECTIONS[name], params).train for name in ("teacher", "distill")]
    assert all(t.device == ("cuda" if device == "gpu" else "auto") for t in trains)


def test_photo_configs_crop_and_keep_the_standard_stem(applied):
    """The photo configs (issue 26): both devices, shorter side + centre crop, photo augmentation
    in every training section, and sizes at which torchvision's own stems are used."""
    from shrinkflow.nets.torchvision_nets import SMALL_STEM_BELOW

    photos = [c for c in NAMED if int(c.stem.split("x")[0]) >= SMALL_STEM_BELOW]
    assert {c.stem for c in photos} >= {"224x224-rgb-gpu", "128x128-rgb-cpu"}
    for config in photos:
        params = applied(config)
        assert load_section(SECTIONS["prepare"], params).resize == "crop"
        sections = [load_section(SECTIONS[name], params) for name in ("teacher", "distill")]
        assert sections[1].student.arch == "mobilenet_v3_small"
        assert all(s.train.augment == "resized_crop_flip" for s in sections)


def test_bad_overlay_is_one_line_and_leaves_params_alone(tmp_path):
    params = tmp_path / "params.yaml"
    shutil.copy(PARAMS, params)
    cases = {"typo.yaml": ("distill:\n  temperature: 2\n", r"distill\.temperature is not a key"),
             "shape.yaml": ("distill: 2\n", r"distill is a section in params.yaml"),
             "invalid.yaml": ("distill:\n  T: -1\n", r"distill\.T: Input should be greater")}
    for name, (text, expected) in cases.items():
        (tmp_path / name).write_text(text)
        result = subprocess.run([sys.executable, "-m", "shrinkflow.cli.config", "apply",
                                 str(tmp_path / name), "--params", str(params)],
                                capture_output=True, text=True)
        assert result.returncode == 2 and result.stderr.startswith("error: "), result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert re.search(expected, result.stderr), result.stderr
        assert params.read_bytes() == PARAMS.read_bytes()


def test_a_mapping_of_the_users_own_keys_is_replaced_whole(tmp_path):
    """ladder.rungs (and model.options) hold the user's own keys: an overlay sets the whole
    mapping, where a section's keys are checked one by one against params.yaml."""
    params = tmp_path / "params.yaml"
    shutil.copy(PARAMS, params)
    overlay = tmp_path / "ladder.yaml"
    overlay.write_text("ladder:\n  rungs:\n    w16: {widths: [16, 32]}\n"
                       "distill:\n  student:\n    options: {}\n")
    assert apply_overlay(overlay, params) == ["ladder.rungs"]
    overlay.write_text("ladder:\n  rungs:\n    w8: {widths: [8]}\n")
    assert apply_overlay(overlay, params) == ["ladder.rungs"]
    rungs = load_section(SECTIONS["ladder"], params).rungs
    assert list(rungs) == ["w8"] and rungs["w8"].widths == [8]  # replaced, not merged
    assert apply_overlay(overlay, params) == []


@pytest.mark.parametrize("config", NAMED, ids=[c.stem for c in NAMED])
def test_config_ships_a_ladder_that_builds_for_its_shape_smallest_first(config, applied):
    """Issue 28: each config's rungs resolve against its distill.student, build for its image
    shape and run, and their names sort smallest first: DVC runs foreach items in the order of
    their names (seen on MNIST: w16 before w2), so that is the order they train in."""
    from shrinkflow.nets.zoo import build_model, count_params, make_spec
    from shrinkflow.params.ladder import rung_student

    params = applied(config)
    ladder, distill = (load_section(SECTIONS[name], params) for name in ("ladder", "distill"))
    assert len(ladder.rungs) >= 2 and ladder.early_stop.after_epochs > 0
    side, colour = int(config.stem.split("x")[0]), config.stem.split("-")[1]
    channels = 1 if colour == "gray" else 3
    sizes = []
    for name, rung in sorted(ladder.rungs.items()):
        spec, input_size = rung_student(name, distill.student, distill.input_size, rung)
        model = build_model(make_spec(spec, channels, 10, [0.5] * channels, [0.25] * channels,
                                      input_size, [side, side])).eval()
        with torch.no_grad():
            assert model(torch.zeros(1, channels, side, side)).shape == (1, 10), name
        sizes.append(count_params(model))
    assert sizes == sorted(sizes), dict(zip(sorted(ladder.rungs), sizes, strict=True))
