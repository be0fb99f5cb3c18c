"""Every ready-to-copy params file under configs/ is a complete, valid params.yaml."""

from pathlib import Path

import pytest
import torch
import yaml

from shrinkflow.params.all_sections import SECTIONS
from shrinkflow.params.load import load_section

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


def test_the_three_shapes_and_devices_are_covered():
    names = {c.stem for c in CONFIGS}
    assert {"28x28-gray-cpu", "32x32-rgb-cpu", "32x32-rgb-gpu"} <= names


@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_config_validates_against_every_schema(config, monkeypatch):
    if "gpu" in config.stem:  # its `device: cuda` is checked against the GPUs of this machine
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    raw = yaml.safe_load(config.read_text())
    assert set(raw) == set(SECTIONS), f"{config.name}: sections {sorted(raw)}"
    for section in SECTIONS:
        load_section(SECTIONS[section], config)  # raises on a missing, unknown or invalid key


@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_config_matches_its_name(config, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    shape, colour, device = config.stem.split("-")
    prepare = load_section(SECTIONS["prepare"], config)
    assert prepare.split == "source" and prepare.path.startswith("data/raw/")
    assert prepare.channels == (1 if colour == "gray" else 3)
    if prepare.source == "imagefolder":
        assert f"{prepare.image_size}x{prepare.image_size}" == shape
    trains = [load_section(SECTIONS[name], config).train for name in ("teacher", "distill")]
    assert all(t.device == ("cuda" if device == "gpu" else "auto") for t in trains)


def test_photo_configs_crop_and_keep_the_standard_stem(monkeypatch):
    """The photo configs (issue 26): both devices, shorter side + centre crop, photo augmentation
    in every training section, and sizes at which torchvision's own stems are used."""
    from shrinkflow.nets.torchvision_nets import SMALL_STEM_BELOW

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    photos = [c for c in CONFIGS if int(c.stem.split("x")[0]) >= SMALL_STEM_BELOW]
    assert {c.stem for c in photos} >= {"224x224-rgb-gpu", "128x128-rgb-cpu"}
    for config in photos:
        assert load_section(SECTIONS["prepare"], config).resize == "crop"
        sections = [load_section(SECTIONS[name], config) for name in ("teacher", "distill")]
        assert sections[1].student.arch == "mobilenet_v3_small"
        assert all(s.train.augment == "resized_crop_flip" for s in sections)
