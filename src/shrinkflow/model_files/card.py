"""The model card: what a deployed model needs to be used correctly, carried by the model file.

A card is a small JSON object (``make_card``): the class names, the input size and channels, the
preprocessing the model expects, its accuracy and drop against the teacher, its measured latency,
and the commit of the pipeline that made it. The ``select`` stage writes it twice:

* **inside the model file**, so a copied model still knows its classes and input: an ONNX file
  gets it as the ``metadata_props`` entry ``shrinkflow.card`` (ONNX Runtime reads it back with
  ``session.get_modelmeta().custom_metadata_map``, so reading needs neither torch nor the
  ``onnx`` package); a ``.pt`` file gets it in its payload, ``meta["card"]`` (plain data, still
  loadable with ``weights_only=True``; ``model_files.open.open_model(path).meta["card"]``);
* **beside the model** as ``card.json``, the same text, for people and tools that do not open
  models.

``shrinkflow.cli.predict`` runs a model from its card alone. Reading (``card_from_json``,
``check_card``, ``card_from_onnx_metadata``) needs only the standard library, so this module is
importable without torch: the deploy path runs with onnxruntime, numpy and Pillow only. Writing
into a model file needs the ``onnx`` package or torch; those imports sit inside the two writers
(see ``write_model_card``) for that reason.

Reproducibility: same inputs on the same commit give the same bytes. The card holds no time,
host name or absolute path; its figures come from the stage's inputs (metrics files, benchmark
rows, the data's meta.json); its JSON is written with a fixed key order; ``onnx.save`` and
``torch.save`` (through a file handle) serialise the same content to the same bytes. The one
field that does not come from a DVC input is ``pipeline``: the git commit checked out when the
stage ran (``HEAD``) and which pipeline files differed from it (``git status``), e.g.
``params.yaml`` in a ``dvc exp run -S ...``. It identifies the code that made the model (a
content hash of the inputs would say *that* they changed, not *where to find them*). It is not a
DVC dependency on purpose: committing results must not rerun ``select``. So a card keeps the
commit at which the model was actually made, and only ``dvc repro -f select`` on a later commit
changes its bytes, in that field alone. Without git (an exported tarball) both fields are null.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from shrinkflow.core.errors import ShrinkflowError
from shrinkflow.model_files.limits import MAX_SIDE

CARD_FORMAT = "shrinkflow-card/1"
CARD_KEY = "shrinkflow.card"  # the ONNX metadata_props entry
CARD_FILE = "card.json"  # the copy beside the model
COLOR_MODES = {1: "L", 3: "RGB"}  # channels -> the PIL mode images are converted to


def make_card(
    *,
    model: str,
    made_from: str,
    file_format: str,
    runtime: str,
    precision: str,
    classes: Sequence[str],
    input_shape: Sequence[int],
    mean: Sequence[float],
    std: Sequence[float],
    accuracy: float,
    teacher_accuracy: float,
    drop_points: float,
    test_images: int | None,
    data: Mapping[str, Any],
    latency: Mapping[str, Any],
    size: Mapping[str, Any],
    pipeline: Mapping[str, Any],
    resize: str = "bilinear",
    score_field: str = "acc",
) -> dict[str, Any]:
    """The card of one deployable model, as plain JSON data in a fixed key order.

    ``input_shape`` is the data's (C, H, W): every shrinkflow model takes full-size images and
    does its own downsampling (``distill.input_size``) and mean/std normalisation inside
    (``nets.zoo.Classifier``), so the preprocessing outside is only "8-bit pixels / 255";
    ``mean``/``std`` are recorded for reference with ``normalize_in_model: true``.
    ``latency`` holds the benchmark's runtime, threads, cpu and ``p50_ms`` per batch size.
    ``score_field`` names the test score in the ``accuracy`` section: ``test_acc`` /
    ``teacher_acc``, or ``test_map`` / ``teacher_map`` for a detector
    (``core.metric_keys.Score.field``).
    """
    channels, height, width = (int(s) for s in input_shape)
    return {
        "format": CARD_FORMAT,
        "model": model,
        "made_from": made_from,
        "file_format": file_format,
        "runtime": runtime,
        "precision": precision,
        "classes": [str(c) for c in classes],
        "input": {"name": "input", "layout": "NCHW", "dtype": "float32",
                  "channels": channels, "height": height, "width": width},
        "preprocessing": {
            # what prepare did to image files (shrinkflow.data.images): convert to this mode,
            # then resize: bilinear (squash to height x width), center_crop or letterbox
            "color_mode": COLOR_MODES.get(channels),
            "resize": resize,
            "divide_by": 255.0,  # 8-bit pixels -> [0, 1]
            "normalize_in_model": True,
            "mean": [float(m) for m in mean],
            "std": [float(s) for s in std],
        },
        "accuracy": {f"test_{score_field}": accuracy, f"teacher_{score_field}": teacher_accuracy,
                     "drop_points": drop_points, "test_images": test_images, **data},
        "latency": dict(latency),
        "size": dict(size),
        "pipeline": dict(pipeline),
    }


def card_json(card: Mapping[str, Any]) -> str:
    """The card as text: the ONNX metadata value and the content of card.json (same bytes)."""
    return json.dumps(card, indent=2) + "\n"


def _bad(source: str | Path, what: str) -> ShrinkflowError:
    return ShrinkflowError(f"{source}: model card {what}")


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def check_card(card: Any, source: str | Path) -> dict[str, Any]:
    """The card if it has what running the model needs; else one line naming ``source`` and the
    first bad field. Figures (accuracy, latency) are informative and not checked."""
    if not isinstance(card, dict):
        raise _bad(source, f"is not a JSON object ({type(card).__name__})")
    if card.get("format") != CARD_FORMAT:
        raise _bad(source, f"format {card.get('format')!r} is not {CARD_FORMAT!r} (made by "
                           "another shrinkflow version?)")
    classes = card.get("classes")
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str)
                                                               for c in classes):
        raise _bad(source, "'classes': expected a non-empty list of class names")
    shape = card.get("input")
    if not isinstance(shape, dict) or not all(_positive_int(shape.get(k))
                                              for k in ("channels", "height", "width")):
        raise _bad(source, "'input': expected positive integers channels, height, width")
    if max(shape["height"], shape["width"]) > MAX_SIDE:
        raise _bad(source, f"'input': {shape['height']}x{shape['width']} images; at most "
                           f"{MAX_SIDE} pixels a side")
    pre = card.get("preprocessing")
    if not isinstance(pre, dict):
        raise _bad(source, "has no 'preprocessing' object")
    channels = shape["channels"]
    if pre.get("color_mode") != COLOR_MODES.get(channels):
        raise _bad(source, f"'preprocessing.color_mode' = {pre.get('color_mode')!r} does not "
                           f"fit {channels}-channel input (image files give 1 or 3 channels)")
    if not isinstance(pre.get("divide_by"), (int, float)) or not pre["divide_by"] > 0:
        raise _bad(source, "'preprocessing.divide_by': expected a positive number")
    if not pre.get("normalize_in_model"):
        for key in ("mean", "std"):
            values = pre.get(key)
            if not isinstance(values, list) or len(values) != channels or not all(
                    isinstance(v, (int, float)) for v in values):
                raise _bad(source, f"'preprocessing.{key}': expected {channels} numbers")
        if not all(s > 0 for s in pre["std"]):
            raise _bad(source, "'preprocessing.std': expected positive numbers")
    return card


def card_from_json(text: str, source: str | Path) -> dict[str, Any]:
    """Parse and check a card (card.json, or the ONNX metadata value)."""
    try:
        card = json.loads(text)
    except ValueError as exc:
        raise _bad(source, f"is not valid JSON ({exc})") from None
    return check_card(card, source)


def read_card_file(path: str | Path) -> dict[str, Any]:
    """card.json beside a model."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ShrinkflowError(f"{path}: cannot read the model card ({exc.strerror})") from None
    return card_from_json(text, path)


def card_from_onnx_metadata(metadata: Mapping[str, str], source: str | Path) -> dict[str, Any]:
    """The card in an ONNX file's metadata (as ONNX Runtime's ``custom_metadata_map`` gives it)."""
    if CARD_KEY not in metadata:
        raise ShrinkflowError(f"{source}: no model card (ONNX metadata {CARD_KEY!r} is missing); "
                              "the select_final stage writes models/final/ with one")
    return card_from_json(metadata[CARD_KEY], source)


def card_from_pt_meta(meta: Mapping[str, Any], source: str | Path) -> dict[str, Any]:
    """The card in a ``.pt`` model's ``meta`` (``model_files.open.open_model(path).meta``)."""
    if "card" not in meta:
        raise ShrinkflowError(f"{source}: no model card (meta['card'] is missing); the select "
                              "stage writes models/final/ with one")
    return check_card(meta["card"], source)


def write_model_card(source: str | Path, target: str | Path, card: Mapping[str, Any]) -> None:
    """Copy model file ``source`` to ``target`` with ``card`` inside it (see the module
    docstring for where). The caller makes ``target`` atomic (``commit_outputs``)."""
    source, target = Path(source), Path(target)
    check_card(dict(card), source)
    if source.suffix == ".onnx":
        _write_onnx_card(source, target, card)
    elif source.suffix == ".pt":
        _write_pt_card(source, target, card)
    else:
        raise ShrinkflowError(f"{source}: unknown model file type {source.suffix!r} (expected "
                              ".onnx or .pt)")


def _write_onnx_card(source: Path, target: Path, card: Mapping[str, Any]) -> None:
    # The onnx package is imported here, not at the top: shrinkflow.cli.predict imports this module
    # and must run with onnxruntime, numpy and Pillow only (tests/unit/cli/test_predict.py blocks
    # the rest).
    import onnx

    proto = onnx.load(str(source))
    entries = {p.key: p for p in proto.metadata_props}
    entry = entries.get(CARD_KEY) or proto.metadata_props.add()
    entry.key, entry.value = CARD_KEY, card_json(card)
    onnx.save(proto, str(target))


def _write_pt_card(source: Path, target: Path, card: Mapping[str, Any]) -> None:
    # torch (through shrinkflow.model_files.pt) is imported here for the same reason as onnx above:
    # the ONNX deploy path must not need it.
    from shrinkflow.model_files.pt import load_checkpoint, write_checkpoint

    payload = load_checkpoint(source)
    write_checkpoint(target, {**payload, "meta": {**payload["meta"], "card": dict(card)}})


def pipeline_commit(paths: Sequence[str], cwd: str | Path = ".") -> dict[str, Any]:
    """The git commit checked out in ``cwd`` and which of ``paths`` (the pipeline's code and
    params) differ from it, sorted; both None outside a git work tree or without git."""
    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True,
                                  timeout=30)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout if done.returncode == 0 else None

    commit = git("rev-parse", "--verify", "--quiet", "HEAD")
    if commit is None or not commit.strip():
        return {"commit": None, "modified": None}
    status = git("status", "--porcelain", "--untracked-files=all", "--", *paths) or ""
    modified = sorted({line[3:].split(" -> ")[-1].strip('"') for line in status.splitlines()
                       if len(line) > 3})
    return {"commit": commit.strip(), "modified": modified}
