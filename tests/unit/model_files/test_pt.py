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
    with pytest.raises(ShrinkflowError, match=r"evil\.pt: holds a Python object .*refuses"):
        load_checkpoint(tmp_path / "evil.pt")
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(ShrinkflowError, match="not a shrinkflow model file"):
        load_checkpoint(tmp_path / "other.pt")


def _small_payload() -> dict:
    from shrinkflow.model_files.pt import MODEL_FORMAT
    from shrinkflow.nets.zoo import build_model, make_spec
    from shrinkflow.params.common import ModelSpec

    spec = make_spec(ModelSpec(widths=[4, 8], depth=1), 1, 3, [0.5], [0.25])
    state = {k: v.clone() for k, v in build_model(spec).state_dict().items()}
    return {"format": MODEL_FORMAT, "spec": spec, "state_dict": state, "meta": {"role": "x"}}


HOSTILE = [  # (what is changed, the field the one error line must name)
    (lambda p: p.pop("meta"), r"meta: expected a mapping, got missing"),
    (lambda p: p.__setitem__("state_dict", list(p["state_dict"].values())),
     r"state_dict: expected a mapping, got list"),
    (lambda p: p["spec"].pop("num_classes"), r"spec\.num_classes: expected an integer"),
    (lambda p: p["spec"].__setitem__("arch", "x" * 5000),  # the echoed value is capped
     r"spec\.arch: .*got 'x{90,100}\.\.\.x{90,100}'$"),
    (lambda p: p["spec"].__setitem__("mean", [0.5, 0.5]), r"spec\.mean: expected 1 finite"),
    (lambda p: p["state_dict"].__setitem__("body.x", "text"),
     r"state_dict\.body\.x: expected a tensor, got str"),
    (lambda p: p["spec"].__setitem__("widths", [4096] * 16) or p["spec"].__setitem__("depth", 16),
     r"weights do not match its spec .*: tensor 'body\.features\.3\.weight' is missing"),
    (lambda p: p["state_dict"].__setitem__("mean", torch.zeros(1, 1, 1, 1, dtype=torch.float64)),
     r"state_dict\.mean: dtype torch\.float64, expected torch\.float32"),
    (lambda p: p["spec"].__setitem__("task", "segmentation"),
     r"spec\.task: expected classification or detection"),
    (lambda p: p["spec"].update(task="detection", detector="yolo", image_size=32),
     r"spec\.detector/image_size: expected one of fcos, retinanet and a side"),
    (lambda p: p["spec"].update(task="detection", detector="fcos", image_size=10**9),
     r"spec\.detector/image_size: expected one of fcos, retinanet and a side"),
    (lambda p: p["spec"].update(task="detection", detector="fcos", image_size=32),
     r"spec\.classes: expected 3 class names"),
    (lambda p: p["spec"].update(task="detection", detector="fcos", image_size=32,
                                classes=["a", "b", "c"]),
     r"weights do not match its spec"),  # a classifier's tensors under a detector's spec
]


@pytest.mark.parametrize("damage, expect", HOSTILE)
def test_model_files_are_checked_before_anything_is_built(tmp_path, damage, expect):
    """Missing or mistyped fields, and a spec far bigger than the file's tensors (16 x 16 convs
    of 4096 channels: 38 billion parameters), are one line naming the field; the huge spec is
    built on the meta device only, so this allocates nothing."""
    from shrinkflow.model_files.pt import load_model

    payload = _small_payload()
    damage(payload)
    torch.save(payload, tmp_path / "m.pt")
    with pytest.raises(ShrinkflowError, match=expect) as err:
        load_model(tmp_path / "m.pt")
    assert str(err.value).startswith(f"{tmp_path / 'm.pt'}: ") and "\n" not in str(err.value)


def test_a_loaded_model_holds_the_files_tensors(tmp_path):
    """Built on the meta device then given the file's tensors: same values, same outputs as a
    model built normally, and no tensor left on the meta device."""
    from shrinkflow.model_files.pt import load_model
    from shrinkflow.nets.zoo import build_model

    payload = _small_payload()
    torch.save(payload, tmp_path / "m.pt")
    loaded, _ = load_model(tmp_path / "m.pt")
    reference = build_model(payload["spec"])
    reference.load_state_dict(payload["state_dict"])
    x = torch.rand(2, 1, 8, 8)
    assert not any(t.is_meta for t in [*loaded.parameters(), *loaded.buffers()])
    assert torch.equal(loaded(x), reference.eval()(x))


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
