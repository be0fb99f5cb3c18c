"""Loading a params section (shrinkflow.params.load): one line per bad key naming it and what was
expected, the shipped params.yaml as the one source of defaults."""

import copy
import math

import pytest
import yaml
from pipeline_repo import ROOT

from shrinkflow.core.errors import ShrinkflowError
from shrinkflow.params.all_sections import SECTIONS
from shrinkflow.params.load import load_section

SHIPPED = yaml.safe_load((ROOT / "params.yaml").read_text())


def write(tmp_path, data):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_repo_params_yaml_is_valid_for_every_section():
    for section in SECTIONS:
        load_section(SECTIONS[section], "params.yaml")


def test_unknown_key_names_full_key_and_allowed(tmp_path):
    path = write(tmp_path, {"teacher": {"train": {"epocs": 3}}})
    with pytest.raises(ShrinkflowError) as err:
        load_section(SECTIONS["teacher"], path)
    msg = str(err.value)
    assert "teacher.train.epocs: unknown key" in msg and "epochs" in msg


def test_wrong_type_names_key_and_value(tmp_path):
    path = write(tmp_path, {"teacher": {"train": {"epochs": "ten"}}})
    with pytest.raises(ShrinkflowError, match=r"teacher\.train\.epochs.*'ten'"):
        load_section(SECTIONS["teacher"], path)


def test_unknown_arch_names_close_matches(tmp_path):
    path = write(tmp_path, {"teacher": {"model": {"arch": "resnet05"}}})
    with pytest.raises(ShrinkflowError, match=r"teacher\.model\.arch: unknown architecture "
                                              r"'resnet05'; close matches: resnet50"):
        load_section(SECTIONS["teacher"], path)


def test_unknown_source_lists_allowed(tmp_path):
    path = write(tmp_path, {"prepare": {"source": "mnist"}})
    with pytest.raises(ShrinkflowError, match=r"prepare\.source.*digits.*cifar"):
        load_section(SECTIONS["prepare"], path)


def test_missing_section_and_bad_yaml(tmp_path):
    with pytest.raises(ShrinkflowError, match="missing section 'prune'"):
        load_section(SECTIONS["prune"], write(tmp_path, {"teacher": {}}))
    bad = tmp_path / "bad.yaml"
    bad.write_text("teacher: [unclosed")
    with pytest.raises(ShrinkflowError, match="not valid YAML"):
        load_section(SECTIONS["teacher"], bad)


def test_known_sections_are_the_schema_modules():
    """load.py lists the section modules instead of importing them (deps): the same names."""
    from shrinkflow.params.load import known_sections

    assert known_sections() == sorted(SECTIONS)


def test_unknown_missing_or_empty_params_file_is_named(tmp_path):
    path = write(tmp_path, {**SHIPPED, "distil": {"T": 2.0}})  # a misspelled section
    with pytest.raises(ShrinkflowError, match=r"params\.yaml: unknown section\(s\) distil "
                                              r"\(known sections: benchmark, budget, .*teacher\)"):
        load_section(SECTIONS["distill"], path)
    path.write_text("# nothing but a comment\n")
    with pytest.raises(ShrinkflowError, match=r"params\.yaml: params file is empty; expected the "
                                              r"sections benchmark, budget, distill"):
        load_section(SECTIONS["distill"], path)
    path.unlink()
    with pytest.raises(ShrinkflowError, match=r"params\.yaml: params file not found"):
        load_section(SECTIONS["distill"], path)


def test_an_echoed_value_is_capped():
    """A value made of shared lists (what YAML aliases load as: 10 levels of 10 give 10**10 items
    written out) is echoed in a few hundred characters, without ever being expanded."""
    from shrinkflow.params.load import validate_section

    value = [1] * 10
    for _ in range(9):
        value = [value] * 10
    with pytest.raises(ShrinkflowError) as err:
        validate_section("budget", {**SHIPPED["budget"], "max_drop_points": value},
                         SECTIONS["budget"])
    assert "budget.max_drop_points: " in str(err.value) and len(str(err.value)) < 700


def test_range_checks(tmp_path):
    path = write(tmp_path, {"prepare": {"val_fraction": 0.5, "test_fraction": 0.5}})
    with pytest.raises(ShrinkflowError, match="val_fraction \\+ test_fraction"):
        load_section(SECTIONS["prepare"], path)
    path = write(tmp_path, {"distill": {"alpha": 1.5}})
    with pytest.raises(ShrinkflowError, match="distill.alpha"):
        load_section(SECTIONS["distill"], path)


def shipped_with(key: str, value=None, delete: bool = False) -> dict:
    """The shipped params.yaml with one dotted key changed (or deleted)."""
    data = copy.deepcopy(SHIPPED)
    *parents, leaf = key.split(".")
    node = data
    for part in parents:
        node = node[part]
    if delete:
        del node[leaf]
    else:
        node[leaf] = value
    return data


def error_for(tmp_path, key: str, value=None, delete: bool = False) -> str:
    path = write(tmp_path, shipped_with(key, value, delete))
    with pytest.raises(ShrinkflowError) as err:
        load_section(SECTIONS[key.split(".")[0]], path)
    return str(err.value)


@pytest.mark.parametrize("section", list(SECTIONS))
def test_schema_defaults_equal_the_shipped_params_yaml(section):
    """One source of defaults: a key added to a schema must ship with the same value in
    params.yaml (and the missing-key error quotes the schema default as 'the shipped value')."""
    assert SECTIONS[section]().model_dump() == SHIPPED[section]


@pytest.mark.parametrize("key, shipped", [
    ("distill.alpha", "0.5"), ("prune.ratio", "0.35"), ("prune.iterative_steps", "4"),
    ("prune.train.lr", "0.02"), ("teacher.train.epochs", "10"),
    ("benchmark.batch_sizes", "[1, 64]"),
])
def test_missing_key_is_an_error_naming_the_shipped_value(tmp_path, key, shipped):
    msg = error_for(tmp_path, key, delete=True)
    assert msg == (f"invalid params: {key}: missing from params.yaml "
                   f"(the shipped value is {shipped})")


def float_keys(node, prefix: str):
    """Every dotted key of params.yaml holding a float (or a list of floats)."""
    for name, value in node.items():
        key = f"{prefix}.{name}" if prefix else name
        if isinstance(value, dict):
            yield from float_keys(value, key)
        elif isinstance(value, float) or (
                isinstance(value, list) and value and all(isinstance(v, float) for v in value)):
            yield key


FLOAT_KEYS = list(float_keys(SHIPPED, ""))


def test_float_keys_cover_the_ones_that_broke_training():
    assert {"distill.T", "prune.kd.T", "teacher.train.lr", "distill.alpha"} <= set(FLOAT_KEYS)


@pytest.mark.parametrize("key", FLOAT_KEYS)
@pytest.mark.parametrize("bad", [math.inf, -math.inf, math.nan])
def test_every_float_param_must_be_finite(tmp_path, key, bad):
    value = [bad] if isinstance(_get(SHIPPED, key), list) else bad
    msg = error_for(tmp_path, key, value)
    assert msg.startswith(f"invalid params: {key}:") and "\n" not in msg


def _get(data: dict, key: str):
    for part in key.split("."):
        data = data[part]
    return data


@pytest.mark.parametrize("key, value, expected", [
    ("teacher.train.epochs", 0, "greater than or equal to 1"),
    ("distill.train.epochs", 0, "greater than or equal to 1"),
    ("prune.train.epochs", 0, "greater than or equal to 1"),
    ("teacher.train.epochs", 10_001, "less than or equal to 10000"),
    ("teacher.train.batch_size", 0, "greater than or equal to 1"),
    ("distill.train.batch_size", 70_000, "less than or equal to 65536"),
    ("teacher.train.lr", "1e9", "less than or equal to 10"),
    ("distill.T", 1000.0, "less than or equal to 100"),
    ("prune.kd.T", 0.0, "greater than 0"),
    ("teacher.train.label_smoothing", 1.0, "less than 1"),
    ("teacher.train.seed", -1, "greater than or equal to 0"),
    ("quantize.calibration_samples", 0, "greater than or equal to 1"),
    ("evaluate.batch_size", 0, "greater than or equal to 1"),
    ("benchmark.repeats", 0, "greater than or equal to 1"),
    ("benchmark.rounds", 0, "greater than or equal to 1"),
    ("benchmark.batch_sizes", [0, -5], "item 0: Input should be greater than or equal to 1"),
    ("teacher.model.widths", [8, 0], "item 1: Input should be greater than or equal to 1"),
    ("prune.sensitivity_ratios", [0.5, 1.0], "item 1: Input should be less than 1"),
])
def test_counts_and_bounds(tmp_path, key, value, expected):
    msg = error_for(tmp_path, key, value)
    assert msg.startswith(f"invalid params: {key}: ") and expected in msg, msg
    assert "\n" not in msg  # one line per bad key, even with two bad list items
