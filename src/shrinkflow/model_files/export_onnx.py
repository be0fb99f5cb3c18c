"""fp32 PyTorch model -> one self-contained ONNX file that carries the model's own figures.

The exported file has a dynamic batch axis, one input ``"input"`` ([0, 1] float images, the
model normalises them itself) and one output ``"logits"``. Its ``metadata_props`` record the fp32
model's MACs, parameter count and class count, because an int8 graph made from it cannot be
counted and every flavour of one model should report the same figures; the quantizer drops
metadata, so ``copy_metadata`` puts it back on its output. ``model_files.open.open_model`` runs the
files and reads those figures back.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import onnx
import torch
from torch import nn

from shrinkflow.core.outputs import atomic_path
from shrinkflow.model_files.open import (
    INPUT_NAME,
    META_CLASSES,
    META_MACS,
    META_PARAMS,
    OUTPUT_NAME,
)
from shrinkflow.nets.zoo import count_macs, count_params


def read_metadata(path: str | Path) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX file (without loading its weights)."""
    model = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in model.metadata_props}


def _set_metadata(model: onnx.ModelProto, meta: dict[str, str]) -> None:
    """Add or overwrite ``metadata_props`` entries of an in-memory model."""
    existing = {p.key: p for p in model.metadata_props}
    for key, value in meta.items():
        if key in existing:
            existing[key].value = str(value)
        else:
            entry = model.metadata_props.add()
            entry.key, entry.value = key, str(value)


def write_metadata(path: str | Path, meta: dict[str, str]) -> None:
    """Add or overwrite ``metadata_props`` entries of an ONNX file in place."""
    proto = onnx.load(str(path))
    _set_metadata(proto, meta)
    onnx.save(proto, str(path))


def copy_metadata(src: str | Path, dst: str | Path, extra: dict[str, str]) -> None:
    """Put ``src``'s metadata (plus ``extra``) on ``dst``: ORT's quantizer drops it."""
    write_metadata(dst, {**read_metadata(src), **extra})


# fp32 export: logits agree to float precision (measured ~1e-6 on digits); checked by
# export_onnx@NAME and distill_rung@NAME on the test split
FP32_MAX_ABS_DIFF = 1e-3


def export_onnx(
    model: nn.Module, input_shape: tuple[int, ...], path: str | Path, opset: int = 17
) -> dict[str, str]:
    """Export an fp32 model to ONNX (dynamic batch, input "input", output "logits"), atomically.

    Uses the TorchScript exporter (``dynamo=False``): it writes one self-contained file, while
    the dynamo exporter puts weights in a side file. Returns the metadata written.
    """
    model = model.eval().cpu()
    example = torch.zeros(1, *input_shape)
    with torch.no_grad():
        num_classes = int(model(example).shape[1])
    meta = {
        META_MACS: str(count_macs(model, tuple(input_shape))),
        META_PARAMS: str(count_params(model)),
        META_CLASSES: str(num_classes),
    }
    with atomic_path(path) as tmp, warnings.catch_warnings():
        # the TorchScript exporter is deprecated upstream but is the one that writes one file
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model,
            (example,),
            str(tmp),
            dynamo=False,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            do_constant_folding=True,
        )
        write_metadata(tmp, meta)
    return meta


