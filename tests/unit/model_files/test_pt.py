"""The .pt model file (shrinkflow.model_files.pt): exact, weights-only round trips, reproducible
bytes, roles, and files that are not shrinkflow models."""

from __future__ import annotations

import pytest
import torch

from shrinkflow.core.errors import ShrinkflowError
from shrinkflow.model_files.pt import load_checkpoint, load_model, save_model
from shrinkflow.nets.zoo import build_model, count_params, make_spec
from shrinkflow.params.common import ModelSpec

# torchvision models take seconds each to build and save here: the fast loop keeps the cnn
ARCHS = [ModelSpec(arch="cnn", widths=[8, 16]),
         pytest.param(ModelSpec(arch="resnet18"), marks=pytest.mark.slow, id="resnet18"),
         pytest.param(ModelSpec(arch="mobilenet_v2", width_mult=0.25), marks=pytest.mark.slow,
                      id="mobilenet_v2")]


def spec_for(model_params: ModelSpec, channels: int = 1) -> dict:
    return make_spec(model_params, channels, 7, [0.5] * channels, [0.25] * channels)


def test_pickled_module_files_are_refused(tmp_path):
    torch.save(torch.nn.Linear(2, 2), tmp_path / "evil.pt")  # a whole module: needs unpickling
    with pytest.raises(ShrinkflowError, match="not a loadable shrinkflow model"):
        load_checkpoint(tmp_path / "evil.pt")
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(ShrinkflowError, match="not a shrinkflow model file"):
        load_checkpoint(tmp_path / "other.pt")


def test_saving_the_same_model_twice_gives_identical_bytes(tmp_path):
    spec = make_spec(ModelSpec(widths=[4]), 1, 3, [0.5], [0.5])
    torch.manual_seed(0)
    model = build_model(spec)
    save_model(tmp_path / "a.pt", model, spec)
    save_model(tmp_path / "b.pt", model, spec)
    assert (tmp_path / "a.pt").read_bytes() == (tmp_path / "b.pt").read_bytes()


@pytest.mark.parametrize("model_params", ARCHS, ids=lambda m: getattr(m, "arch", None))
def test_save_load_round_trip_is_exact_and_weights_only(tmp_path, model_params):
    torch.manual_seed(0)
    spec = spec_for(model_params, 3)
    model = build_model(spec).eval()
    save_model(tmp_path / "m.pt", model, spec, note="x")
    payload = torch.load(tmp_path / "m.pt", weights_only=True)
    assert payload["spec"] == spec and payload["meta"] == {"note": "x"}
    loaded, _ = load_model(tmp_path / "m.pt")
    x = torch.rand(2, 3, 8, 8)
    assert torch.equal(model(x), loaded(x))


def test_roles_keep_a_student_from_passing_as_the_teacher(tmp_path):
    spec = spec_for(ModelSpec(widths=[4, 8]))
    model, path = build_model(spec), tmp_path / "m.pt"
    save_model(path, model, spec, role="student")
    with pytest.raises(ShrinkflowError, match=r"m\.pt: expected the 'teacher' model .* holds "
                                              r"the 'student' model"):
        load_model(path, role="teacher")
    save_model(tmp_path / "old.pt", model, spec)  # saved before roles existed
    with pytest.raises(ShrinkflowError, match="no role recorded"):
        load_model(tmp_path / "old.pt", role="teacher")
    reloaded, payload = load_model(path, role="student")
    assert payload["meta"]["role"] == "student" and count_params(reloaded) == count_params(model)
