import pytest
import yaml

from shrinkflow.errors import ShrinkflowError
from shrinkflow.params import SECTIONS, load_section


def write(tmp_path, data):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_repo_params_yaml_is_valid_for_every_section():
    for section in SECTIONS:
        load_section(section, "params.yaml")


def test_unknown_key_names_full_key_and_allowed(tmp_path):
    path = write(tmp_path, {"teacher": {"train": {"epocs": 3}}})
    with pytest.raises(ShrinkflowError) as err:
        load_section("teacher", path)
    msg = str(err.value)
    assert "teacher.train.epocs: unknown key" in msg and "epochs" in msg


def test_wrong_type_names_key_and_value(tmp_path):
    path = write(tmp_path, {"teacher": {"train": {"epochs": "ten"}}})
    with pytest.raises(ShrinkflowError, match=r"teacher\.train\.epochs.*'ten'"):
        load_section("teacher", path)


def test_unknown_arch_lists_allowed(tmp_path):
    path = write(tmp_path, {"teacher": {"model": {"arch": "vit"}}})
    with pytest.raises(ShrinkflowError, match=r"teacher\.model\.arch.*'cnn'.*mobilenet_v2"):
        load_section("teacher", path)


def test_unknown_source_lists_allowed(tmp_path):
    path = write(tmp_path, {"prepare": {"source": "mnist"}})
    with pytest.raises(ShrinkflowError, match=r"prepare\.source.*digits.*cifar"):
        load_section("prepare", path)


def test_missing_section_and_bad_yaml(tmp_path):
    with pytest.raises(ShrinkflowError, match="missing section 'prune'"):
        load_section("prune", write(tmp_path, {"teacher": {}}))
    bad = tmp_path / "bad.yaml"
    bad.write_text("teacher: [unclosed")
    with pytest.raises(ShrinkflowError, match="not valid YAML"):
        load_section("teacher", bad)


def test_range_checks(tmp_path):
    path = write(tmp_path, {"prepare": {"val_fraction": 0.5, "test_fraction": 0.5}})
    with pytest.raises(ShrinkflowError, match="val_fraction \\+ test_fraction"):
        load_section("prepare", path)
    path = write(tmp_path, {"distill": {"alpha": 1.5}})
    with pytest.raises(ShrinkflowError, match="distill.alpha"):
        load_section("distill", path)


def test_defaults_fill_missing_keys(tmp_path):
    p = load_section("teacher", write(tmp_path, {"teacher": {"train": {"epochs": 2}}}))
    assert p.train.epochs == 2 and p.model.arch == "cnn"
