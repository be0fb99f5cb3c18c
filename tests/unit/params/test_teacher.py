"""The teacher section's own rules (shrinkflow.params.teacher): mode and init, ensemble seeds."""

from __future__ import annotations

import pytest
import yaml
from pipeline_repo import ROOT as REPO
from pipeline_repo import shipped_params

from shrinkflow.core.errors import ShrinkflowError
from shrinkflow.params.load import validate_section
from shrinkflow.params.teacher import TeacherParams


def test_params_mode_and_init():
    shipped = yaml.safe_load((REPO / "params.yaml").read_text())["teacher"]
    assert validate_section("teacher", shipped, TeacherParams).mode == "train"
    with pytest.raises(ShrinkflowError, match="mode 'import' needs teacher.init"):
        validate_section("teacher", {"mode": "import"}, TeacherParams)
    for outside in ("/tmp/w.pt", "../w.pt"):
        with pytest.raises(ShrinkflowError, match="teacher.init: .*inside the repository"):
            validate_section("teacher", {"init": outside}, TeacherParams)


@pytest.mark.parametrize("seeds, error", [
    ([1, 1], r"teacher\.ensemble_seeds: .*distinct, \[1\] repeated"),
    ([0, 2], r"teacher\.ensemble_seeds: .*must not contain teacher\.train\.seed \(0\)"),
    ([-1], r"teacher\.ensemble_seeds: item 0: .*greater than or equal to 0"),
    ("3", r"teacher\.ensemble_seeds: .*valid list"),
])
def test_bad_member_seeds_get_one_line_naming_the_key(seeds, error):
    raw = {**shipped_params()["teacher"], "ensemble_seeds": seeds}
    with pytest.raises(ShrinkflowError, match=error) as info:
        validate_section("teacher", raw, TeacherParams)
    assert "\n" not in str(info.value)


def test_members_need_train_mode():
    raw = {**shipped_params()["teacher"], "mode": "import", "init": "w.pt", "ensemble_seeds": [1]}
    with pytest.raises(ShrinkflowError, match=r"teacher\.ensemble_seeds: .*needs teacher\.mode"):
        validate_section("teacher", raw, TeacherParams)
