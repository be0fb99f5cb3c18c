"""Model files: ``{format, spec, state_dict, meta}`` with plain tensors and JSON-like data only,
read back with ``torch.load(..., weights_only=True)`` and rebuilt from their spec.

Writing goes through ``shrinkflow.core.outputs``' commit (``write_model_file(out.file(target),
...)``
inside ``commit_outputs``), so a model appears together with the stage's other outputs or not at
all. Kept apart from ``artifacts`` so that stages which write no model do not import torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from shrinkflow.core.errors import ShrinkflowError
from shrinkflow.core.outputs import commit_outputs
from shrinkflow.nets.zoo import build_model, resize_to_state_dict

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


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a model file safely (``weights_only=True``) and check it is one of ours."""
    path = Path(path)
    if not path.is_file():
        raise ShrinkflowError(f"{path}: model file not found (has the stage that writes it run?)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt or unsafe files
        reason = " ".join(str(exc).split()).split(". ")[0]  # torch adds paragraphs of advice
        raise ShrinkflowError(
            f"{path}: not a loadable shrinkflow model file ({type(exc).__name__}: {reason})"
        ) from exc
    if not isinstance(payload, dict) or payload.get("format") != MODEL_FORMAT:
        raise ShrinkflowError(f"{path}: not a shrinkflow model file (expected {MODEL_FORMAT})")
    return payload


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
    """The fp32 model held by an already-read checkpoint (``path`` is for error messages)."""
    if payload["meta"].get("quantized"):
        raise ShrinkflowError(f"{path}: an int8 model; open it with "
                              "shrinkflow.model_files.open.open_model")
    spec, state = payload["spec"], payload["state_dict"]
    try:
        model = build_model(spec)
    except (KeyError, TypeError, ValueError) as exc:
        raise ShrinkflowError(
            f"{path}: its spec cannot be built ({type(exc).__name__}: {exc})"
        ) from exc
    check_weights_match(model, state, path, spec, pruned=bool(payload["meta"].get("pruned")))
    resize_to_state_dict(model, state)
    model.load_state_dict(state)
    return model.eval()


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
        got, want = tuple(tensor.shape), tuple(expected[key].shape)
        fits = got == want or (pruned and len(got) == len(want)
                               and all(g <= w for g, w in zip(got, want, strict=True)))
        if not fits:
            raise ShrinkflowError(
                f"{path}: weights do not match {built}: tensor {key!r} has shape {list(got)} "
                f"but the spec builds {list(want)}" + (" (or smaller: pruned)" if pruned else "")
            )
