"""The ladder's rungs: distill.student with a few keys changed; bad rungs are one line."""

import pytest
import yaml
from pipeline_repo import shipped_params

from shrinkflow.core.errors import ShrinkflowError
from shrinkflow.params.common import ModelSpec
from shrinkflow.params.ladder import LadderParams, Rung, rung_student
from shrinkflow.params.load import load_section


def test_a_rung_changes_only_its_keys():
    base = ModelSpec(arch="cnn", widths=[32, 64, 128], depth=2)
    spec, size = rung_student("w8", base, 16, Rung(widths=[8, 16], depth=1))
    assert (spec.arch, spec.widths, spec.depth, size) == ("cnn", [8, 16], 1, 16)
    spec, size = rung_student("small", base, 16, Rung(input_size=8))
    assert spec == base and size == 8
    mobile = ModelSpec(arch="mobilenet_v2", width_mult=1.0)
    assert rung_student("half", mobile, 0, Rung(width_mult=0.5))[0].width_mult == 0.5


def test_a_rung_of_another_arch_inherits_none_of_the_students_keys():
    base = ModelSpec(arch="mobilenet_v3_small", options={"dropout": 0.1})
    spec, _ = rung_student("cnn16", base, 0, Rung(arch="cnn", widths=[16, 32]))
    assert (spec.arch, spec.widths, spec.options) == ("cnn", [16, 32], {})
    spec, _ = rung_student("m", ModelSpec(arch="cnn", widths=[8]), 0,
                           Rung(arch="mobilenet_v2", width_mult=0.5))
    assert (spec.arch, spec.width_mult, spec.widths) == ("mobilenet_v2", 0.5, ModelSpec().widths)


def test_a_rung_that_would_silently_copy_the_student_is_refused():
    with pytest.raises(ShrinkflowError, match=r"ladder.rungs.w.width_mult: applies to "
                                              "mobilenet_v2 only"):
        rung_student("w", ModelSpec(arch="cnn"), 0, Rung(width_mult=0.5))


@pytest.mark.parametrize("rungs, expected", [
    ({"w4": {"widths": [4], "depht": 3}}, "ladder.rungs.w4.depht: unknown key (allowed here: "
                                          "arch, options, widths, depth, width_mult, input_size)"),
    ({"W-4": {"widths": [4]}}, "ladder.rungs.W-4"),
    ({"w4": {"widths": []}}, "ladder.rungs.w4.widths: List should have at least 1 item"),
    ({"rungs": {}, "early_stop": {"after_epochs": -1}}, "ladder.early_stop.after_epochs"),
    ({"rungs": {}, "scratch": "all"}, "ladder.scratch"),
], ids=["unknown key", "bad name", "empty widths", "negative epochs", "unknown scratch"])
def test_bad_rungs_are_one_line_naming_the_key(tmp_path, rungs, expected):
    path = tmp_path / "params.yaml"
    ladder = rungs if "rungs" in rungs else {"rungs": rungs}
    path.write_text(yaml.safe_dump(shipped_params({"ladder": ladder})))
    with pytest.raises(ShrinkflowError) as info:
        load_section(LadderParams, path)
    assert expected in str(info.value) and len(str(info.value).splitlines()) == 1, info.value
