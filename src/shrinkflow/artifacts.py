"""Atomic, safe saving and loading of models, JSON metrics and CSV plot files.

Every write goes to a temporary file beside the target and is renamed into place only when
complete, so an interrupted stage leaves the previous artifact intact rather than a half-written
one. Model files hold tensors and plain data only and load with ``weights_only=True``.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from shrinkflow.errors import ShrinkflowError
from shrinkflow.models import build_model, resize_to_state_dict

MODEL_FORMAT = "shrinkflow-model/1"


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the body succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o644)  # mkstemp makes 0600; artifacts are meant to be shared
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a fresh temporary directory; swap it in for ``path`` only if the body succeeds.

    The previous directory is kept until the new one is complete, then removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    old = path.with_name(f".{path.name}.old")
    try:
        yield tmp
        shutil.rmtree(old, ignore_errors=True)
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_json(path: str | Path, data: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


def read_json(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ShrinkflowError(f"{path}: file not found (has the stage that writes it run?)")
    return json.loads(path.read_text())


def write_csv(
    path: str | Path, rows: list[dict[str, Any]], fieldnames: list[str] | None = None
) -> None:
    """Write rows (all with the same keys) as CSV.

    Pass ``fieldnames`` when ``rows`` may be empty, so a declared plots file still has a header.
    """
    fieldnames = fieldnames or (list(rows[0]) if rows else [])
    with atomic_path(path) as tmp, tmp.open("w", newline="") as fh:
        if fieldnames:
            writer = csv.DictWriter(fh, fieldnames=fieldnames)
            writer.writeheader()
            writer.writerows(rows)


def save_model(path: str | Path, model: nn.Module, spec: dict[str, Any], **meta: Any) -> None:
    """Save a model as {spec, state_dict, meta}: plain tensors and JSON-like data only."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    payload = {"format": MODEL_FORMAT, "spec": spec, "state_dict": state, "meta": meta}
    # Save through a file handle: given a path, torch.save names the zip's root folder after the
    # (random) temp file, so identical models would get different bytes and DVC hashes.
    with atomic_path(path) as tmp, tmp.open("wb") as fh:
        torch.save(payload, fh)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a model file safely (``weights_only=True``) and check it is one of ours."""
    path = Path(path)
    if not path.is_file():
        raise ShrinkflowError(f"{path}: model file not found (has the stage that writes it run?)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt or unsafe files
        raise ShrinkflowError(
            f"{path}: not a loadable shrinkflow model file ({type(exc).__name__}: {exc})"
        ) from exc
    if not isinstance(payload, dict) or payload.get("format") != MODEL_FORMAT:
        raise ShrinkflowError(f"{path}: not a shrinkflow model file (expected {MODEL_FORMAT})")
    return payload


def require_inputs(stage: str, inputs: dict[str, str]) -> None:
    """Fail before any work when an input file is missing, naming the stage that writes it.

    ``inputs`` maps each path to the stage that produces it.
    """
    missing = [f"{path} (written by stage {writer})" for path, writer in inputs.items()
               if not Path(path).is_file()]
    if missing:
        raise ShrinkflowError(f"{stage}: missing input(s): " + "; ".join(missing)
                              + f". Run `dvc repro {stage}` to build them first.")


def load_model(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a saved model (pruned shapes included) in eval mode; returns (model, payload)."""
    payload = load_checkpoint(path)
    return model_from_checkpoint(payload, path), payload


def model_from_checkpoint(payload: dict[str, Any], path: str | Path) -> nn.Module:
    """The fp32 model held by an already-read checkpoint (``path`` is for error messages)."""
    if payload["meta"].get("quantized"):
        raise ShrinkflowError(
            f"{path}: an int8 model; load it with shrinkflow.quantize.load_torch_int8"
        )
    model = build_model(payload["spec"])
    resize_to_state_dict(model, payload["state_dict"])
    model.load_state_dict(payload["state_dict"])
    return model.eval()
