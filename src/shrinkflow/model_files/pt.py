"""Model files: ``{format, spec, state_dict, meta}`` with plain tensors and JSON-like data only,
read back with ``torch.load(..., weights_only=True)`` and rebuilt from their spec.

Writing goes through ``shrinkflow.core.outputs``' commit (``write_model_file(out.file(target),
...)``
inside ``commit_outputs``), so a model appears together with the stage's other outputs or not at
all. Kept apart from ``artifacts`` so that stages which write no model do not import torch.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from shrinkflow.core.errors import ShrinkflowError, clip, echo
from shrinkflow.core.outputs import commit_outputs
from shrinkflow.model_files.limits import MAX_CHANNELS, MAX_CLASSES, MAX_SIDE
from shrinkflow.nets.detectors import BUILDERS, build_detector
from shrinkflow.nets.factory import check_factory_path
from shrinkflow.nets.torchvision_nets import check_arch
from shrinkflow.nets.zoo import OWN_ARCHS, Resize, build_model, resize_to_state_dict

MODEL_FORMAT = "shrinkflow-model/1"


def write_model_file(
    path: str | Path, model: nn.Module, spec: dict[str, Any], **meta: Any
) -> None:
    """Write a model as {format, spec, state_dict, meta} to ``path``, which should be a temporary
    of ``commit_outputs`` (``out.file(target)``); ``save_model`` does both for a lone model."""
    state = {k: _plain(v) for k, v in model.state_dict().items()}
    write_checkpoint(path, {"format": MODEL_FORMAT, "spec": spec, "state_dict": state,
                            "meta": meta})


def write_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """Write an already-built payload (e.g. one ``load_checkpoint`` read, with a new ``meta``)."""
    # Save through a file handle: given a path, torch.save names the zip's root folder after
    # the (random) temp file, so identical models would get different bytes and DVC hashes.
    with Path(path).open("wb") as fh:
        torch.save(payload, fh)


def _plain(value: Any) -> Any:
    """A state_dict entry as plain data: tensors detached on the CPU, tuples of tensors kept, and
    a ``torch.dtype`` (which quantized linear layers store) as its name."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().contiguous()
    if isinstance(value, torch.dtype):
        return str(value)
    if isinstance(value, (tuple, list)):
        return type(value)(_plain(v) for v in value)
    return value


def save_model(path: str | Path, model: nn.Module, spec: dict[str, Any], **meta: Any) -> None:
    """Save a model as {spec, state_dict, meta}: plain tensors and JSON-like data only.

    The one save path for fp32 and int8 models. Stages pass ``role`` (the model's name in the
    pipeline, e.g. ``role="teacher"``) in ``meta``, so a later stage can refuse a file that holds
    another model (``load_model(path, role=...)``).
    """
    with commit_outputs() as out:
        write_model_file(out.file(path), model, spec, **meta)


def torch_load(path: str | Path, name: str | None = None) -> Any:
    """The one ``torch.load`` of the project: ``weights_only=True`` (nothing in the file can run
    code), on the CPU; a file that cannot be read is one line starting with ``name`` (default: the
    path) instead of torch's paragraphs of advice."""
    name = str(path) if name is None else name
    if not Path(path).is_file():
        raise ShrinkflowError(f"{name}: model file not found (has the stage that writes it run?)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt or unsafe files
        raise ShrinkflowError(f"{name}: {_load_error(exc)}") from None


def _load_error(exc: Exception) -> str:
    """One line out of torch.load's multi-paragraph errors."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    unsafe = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if unsafe:
        return (f"holds a Python object torch.load(weights_only=True) refuses "
                f"({unsafe.group(1)}); re-save only the tensors, e.g. "
                f"torch.save(checkpoint['model'], path), on a machine where you trust the file")
    first = " ".join(text.split()).split(". ")[0]
    return f"not a readable torch.save file ({type(exc).__name__}: {clip(first)})"


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a model file safely and check it is one of ours, every field a model is built from
    included (``check_payload``), before anything is built from it."""
    payload = torch_load(path)
    if not isinstance(payload, dict) or payload.get("format") != MODEL_FORMAT:
        raise ShrinkflowError(f"{path}: not a shrinkflow model file (expected {MODEL_FORMAT})")
    return check_payload(payload, path)


def load_model(path: str | Path, role: str | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a saved fp32 model (pruned shapes included) in eval mode; returns (model, payload).

    With ``role``, the file must have been saved as that model (``meta.role``): a student file
    copied over ``models/teacher.pt`` is refused instead of silently used as the teacher.
    """
    payload = load_checkpoint(path)
    if role is not None:
        check_role(payload["meta"], role, path)
    return model_from_checkpoint(payload, path), payload


def check_role(meta: dict[str, Any], role: str, path: str | Path) -> None:
    """Fail unless a model file's ``meta`` says it was saved as the ``role`` model."""
    found = meta.get("role")
    if found != role:
        held = f"the {found!r} model" if found else "a model with no role recorded"
        raise ShrinkflowError(
            f"{path}: expected the {role!r} model (meta.role) but the file holds {held}; "
            "rerun the stage that writes it"
        )


def model_from_checkpoint(payload: dict[str, Any], path: str | Path) -> nn.Module:
    """The fp32 model held by a checkpoint read by ``load_checkpoint`` (``path`` is for error
    messages).

    Nothing is allocated at the spec's size: the architecture is first built on PyTorch's
    ``meta`` device (shapes only, no memory), its tensors are checked against the file's (names,
    shapes, dtypes), and the model then takes the file's own tensors (``assign=True``). So the
    model is never bigger than the file, whatever its spec says (a 1.5 KB file whose spec asked
    for a huge network grew a process to 24 GB before this).
    """
    if payload["meta"].get("quantized"):
        raise ShrinkflowError(f"{path}: an int8 model; open it with "
                              "shrinkflow.model_files.open.open_model")
    spec, state = payload["spec"], payload["state_dict"]
    model = skeleton(spec, path)
    check_weights_match(model, state, path, spec, pruned=bool(payload["meta"].get("pruned")))
    with torch.device("meta"):  # layers resized to a pruned file's shapes stay shapes only too
        resize_to_state_dict(model, state)
    model.load_state_dict(state, assign=True)
    return model.eval()


def skeleton(spec: dict[str, Any], path: str | Path) -> nn.Module:
    """``spec``'s model on the ``meta`` device (no memory), except the input ``Resize``, whose
    matrices are computed from the spec (its sides are bounded by ``check_payload``)."""
    build = build_detector if spec.get("task") == "detection" else build_model
    try:
        try:
            with torch.device("meta"):
                model = build(spec)
        except NotImplementedError:
            # a torchvision constructor that computes on tensors (RegNet's widths) cannot run on
            # the meta device; its size comes from the architecture name, so build it for real
            model = build(spec)
    except (KeyError, TypeError, ValueError) as exc:
        raise ShrinkflowError(
            f"{path}: its spec cannot be built ({type(exc).__name__}: {clip(str(exc))})"
        ) from None
    if spec.get("input_size"):
        model.resize = Resize(spec["image_hw"], spec["input_size"])
    return model


def check_weights_match(
    model: nn.Module, state: dict[str, Any], path: str | Path, spec: dict[str, Any],
    pruned: bool = False,
) -> None:
    """One line naming the first tensor of ``state`` that does not fit ``model``, freshly built
    from ``spec`` (instead of load_state_dict's multi-kilobyte report).

    Names must match exactly, and shapes too, except that a pruned model's tensors may be smaller
    along any axis (structured pruning only removes channels; its layers are resized to them).
    """
    expected = model.state_dict()
    arch = spec["arch"]
    built = f"its spec ({arch}, widths {spec.get('widths')})" if arch == "cnn" else \
        f"its spec ({arch})"
    for key in expected:
        if key not in state:
            raise ShrinkflowError(f"{path}: weights do not match {built}: tensor {key!r} is "
                                  "missing")
    for key, tensor in state.items():
        if key not in expected:
            raise ShrinkflowError(f"{path}: weights do not match {built}: unexpected tensor "
                                  f"{key!r}")
        if tensor.dtype != expected[key].dtype:
            raise ShrinkflowError(f"{path}: state_dict.{key}: dtype {tensor.dtype}, expected "
                                  f"{expected[key].dtype}")
        got, want = tuple(tensor.shape), tuple(expected[key].shape)
        fits = got == want or (pruned and len(got) == len(want)
                               and all(g <= w for g, w in zip(got, want, strict=True)))
        if not fits:
            raise ShrinkflowError(
                f"{path}: weights do not match {built}: tensor {key!r} has shape {list(got)} "
                f"but the spec builds {list(want)}" + (" (or smaller: pruned)" if pruned else "")
            )


# --- what a model file must hold before anything is built from it -----------------------------

SPEC_INTS = {"in_channels": MAX_CHANNELS, "num_classes": MAX_CLASSES}


def _bad(path: str | Path, field: str, expected: str, value: Any) -> ShrinkflowError:
    return ShrinkflowError(f"{path}: {field}: expected {expected}, got {echo(value)}")


def _is_int(value: Any, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _numbers(value: Any, n: int) -> bool:
    return isinstance(value, list) and len(value) == n and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        for v in value)


def check_payload(payload: dict[str, Any], path: str | Path) -> dict[str, Any]:
    """The payload if every field a model is built from is there with the right type and within
    bounds; else one line naming the file and the first bad field (instead of a ``KeyError`` or
    ``AttributeError`` deep in the build). How big the network is gets checked against the
    file's tensors when it is built (``model_from_checkpoint``), not here."""
    for field, kind in (("spec", dict), ("state_dict", dict), ("meta", dict)):
        if not isinstance(payload.get(field), kind):
            what = "missing" if field not in payload else type(payload[field]).__name__
            raise ShrinkflowError(f"{path}: {field}: expected a mapping, got {what}")
    spec, state = payload["spec"], payload["state_dict"]
    if not isinstance(spec.get("arch"), str) or len(spec["arch"]) > 100:
        raise _bad(path, "spec.arch", "an architecture name", spec.get("arch"))
    try:  # a name only: torchvision's, cnn, or a factory under user_nets/ (never other code)
        check_arch(spec["arch"], OWN_ARCHS)
        if spec["arch"] == "factory":
            check_factory_path(spec.get("factory") if isinstance(spec.get("factory"), str)
                               else repr(spec.get("factory")))
    except ValueError as exc:
        raise ShrinkflowError(f"{path}: spec.arch: {clip(str(exc))}") from None
    if not isinstance(spec.get("options", {}), dict):
        raise _bad(path, "spec.options", "a mapping", spec.get("options"))
    for field, high in SPEC_INTS.items():
        if not _is_int(spec.get(field), 1, high):
            raise _bad(path, f"spec.{field}", f"an integer 1..{high}", spec.get(field))
    for field in ("mean", "std"):
        if not _numbers(spec.get(field), spec["in_channels"]):
            raise _bad(path, f"spec.{field}", f"{spec['in_channels']} finite numbers",
                       spec.get(field))
    if spec["arch"] == "cnn":
        widths = spec.get("widths")
        if not (isinstance(widths, list) and 1 <= len(widths) <= 64
                and all(_is_int(w, 1, 2**20) for w in widths)):
            raise _bad(path, "spec.widths", "a list of 1..64 positive integers", widths)
        if not _is_int(spec.get("depth"), 1, 64):
            raise _bad(path, "spec.depth", "an integer 1..64", spec.get("depth"))
    if spec["arch"] == "mobilenet_v2" and not (
            isinstance(spec.get("width_mult"), (int, float))
            and 0 < spec["width_mult"] <= 64):
        raise _bad(path, "spec.width_mult", "a number in (0, 64]", spec.get("width_mult"))
    if spec.get("task", "classification") not in ("classification", "detection"):
        raise _bad(path, "spec.task", "classification or detection", spec.get("task"))
    if spec.get("task") == "detection" and not (
            spec.get("detector") in BUILDERS and _is_int(spec.get("image_size"), 1, MAX_SIDE)):
        raise _bad(path, "spec.detector/image_size",
                   f"one of {', '.join(BUILDERS)} and a side 1..{MAX_SIDE}",
                   [spec.get("detector"), spec.get("image_size")])
    classes = spec.get("classes")
    if spec.get("task") == "detection" and not (
            isinstance(classes, list) and len(classes) == spec["num_classes"]
            and all(isinstance(c, str) and len(c) <= 200 for c in classes)):
        raise _bad(path, "spec.classes", f"{spec['num_classes']} class names", classes)
    if spec.get("input_size"):
        hw = spec.get("image_hw")
        if not (_is_int(spec["input_size"], 1, MAX_SIDE) and isinstance(hw, list)
                and len(hw) == 2 and all(_is_int(v, 1, MAX_SIDE) for v in hw)):
            raise _bad(path, "spec.input_size/image_hw", f"sides 1..{MAX_SIDE}",
                       [spec["input_size"], hw])
    quantized = bool(payload["meta"].get("quantized"))
    for key, value in state.items():
        plain = isinstance(value, torch.Tensor) or (quantized and isinstance(
            value, (str, tuple, list)))  # int8: packed params and dtype names
        if not isinstance(key, str) or not plain:
            raise ShrinkflowError(f"{path}: state_dict.{clip(str(key))}: expected a tensor, got "
                                  f"{type(value).__name__}")
    return payload
