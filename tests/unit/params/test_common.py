"""What every section shares (shrinkflow.params.common): the device check, the training recipe's
defaults and its batch split."""

from __future__ import annotations

import pytest
import torch
from pipeline_repo import shipped_params

from shrinkflow.core.errors import ShrinkflowError
from shrinkflow.params.all_sections import SECTIONS
from shrinkflow.params.common import TrainConfig
from shrinkflow.params.load import validate_section
from shrinkflow.params.teacher import TeacherParams


def nested(dotted: str, value) -> dict:
    """{"a": {"b": value}} for "a.b"."""
    *parents, leaf = dotted.split(".")
    tree = {leaf: value}
    for part in reversed(parents):
        tree = {part: tree}
    return tree


@pytest.mark.parametrize("key", ["teacher.train.device", "distill.train.device",
                                 "prune.train.device", "benchmark.device"])
def test_cuda_without_a_gpu_names_the_key(monkeypatch, key):
    section = key.split(".")[0]
    raw = shipped_params(nested(key, "cuda"))[section]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ShrinkflowError) as err:
        validate_section(section, raw, SECTIONS[section])
    assert str(err.value).startswith(f"invalid params: {key}: no CUDA GPU is visible"), err.value
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    validate_section(section, raw, SECTIONS[section])  # a GPU: fine


def test_library_callers_may_still_build_partial_sections():
    cfg = TrainConfig(epochs=1)
    assert cfg.epochs == 1 and cfg.lr == shipped_params()["teacher"]["train"]["lr"]


def test_batch_size_must_split_over_nproc():
    teacher = shipped_params()["teacher"]
    teacher["train"].update(nproc=4, batch_size=64)
    assert validate_section("teacher", teacher, TeacherParams).train.nproc == 4
    teacher["train"].update(batch_size=30)
    with pytest.raises(ShrinkflowError, match=r"teacher\.train: .*batch_size 30 must be "
                                              r"divisible by nproc 4"):
        validate_section("teacher", teacher, TeacherParams)
