"""PyTorch int8 model files (torch.ao FX, x86 backend): the recipe ``quantize`` runs and the
rebuild ``open_model`` runs, which must be the same steps (the int8 module is rebuilt by
re-running them on the fp32 architecture at the stored shapes).

Two recipes, named in ``meta["quantized"]``: a classifier is int8 end to end
(``TORCH_INT8_KIND``); an FCOS detector (``TORCH_INT8_DETECTOR_KIND``) has only its backbone's
conv-BN-ReLU stages in int8 (``prepare_detector`` / ``convert_detector``): FCOS's forward (a
list of images, the transform, data-dependent post-processing) cannot be FX-traced whole, and the
backbone is the traceable, fusable part that holds most of the convolutions. The head (conv,
GroupNorm, ReLU branches), torchvision's transform, box decoding, score threshold and NMS stay
fp32, as in the ONNX Runtime int8 file (``compress.quantize_detection``)."""

from __future__ import annotations

import math
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.ao.quantization import get_default_qconfig_mapping
from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

from shrinkflow.core.errors import ShrinkflowError, clip
from shrinkflow.model_files.limits import MAX_SIDE
from shrinkflow.model_files.pt import skeleton
from shrinkflow.nets.zoo import Resize, resize_to_state_dict

# PyTorch int8 files: ``meta["quantized"]`` names the recipe, so a file made by another recipe is
# refused rather than rebuilt wrongly. Producing (``quantize``) and opening (here) share
# ``fx_prepare`` / ``fx_convert``, because the int8 module is rebuilt by re-running them.
TORCH_INT8_KIND = "torch.ao-fx-x86/1"
TORCH_INT8_DETECTOR_KIND = "torch.ao-fx-x86-detector-backbone/1"
TORCH_BACKEND = "x86"


def fx_prepare(model: nn.Module, input_shape: tuple[int, ...]) -> nn.Module:
    """Fuse conv-BN-ReLU and insert observers (x86 qconfig); deterministic given the model.

    FX's tracer records a Python stack trace for every graph node, for error messages only; with
    that off (``torch.fx.config.do_not_emit_stack_traces``) the tiny test project's quantize
    stage took 4.5 instead of 7.0 s of CPU and evaluate@quantized_torch 3.0 instead of 5.0 s
    (symbolizing the traces and importing the modules that filter them); the int8 files are
    byte-identical."""
    torch.backends.quantized.engine = TORCH_BACKEND
    example = (torch.zeros(1, *input_shape),)
    saved = torch.fx.config.do_not_emit_stack_traces
    torch.fx.config.do_not_emit_stack_traces = True
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # deprecation notices of torch.ao.quantization
            return prepare_fx(model.eval(), get_default_qconfig_mapping(TORCH_BACKEND), example)
    finally:
        torch.fx.config.do_not_emit_stack_traces = saved


def fx_convert(prepared: nn.Module) -> nn.Module:
    """Observed model -> int8 module (CPU only)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # also "must run observer before calling calculate_qparams"
        return convert_fx(prepared).eval()


def prepare_detector(detector: nn.Module, input_shape: tuple[int, ...]) -> nn.Module:
    """Put observers into ``detector``'s backbone stages, in place (``fx_prepare``); returns the
    detector, which then calibrates by running whole images (the stages see exactly what the
    transform hands them)."""
    detector.eval().backbone.features = fx_prepare(detector.backbone.features, input_shape)
    return detector


def convert_detector(prepared: nn.Module) -> nn.Module:
    """A ``prepare_detector`` detector -> its backbone stages int8, in place (CPU only); the
    stages take and give fp32, so the fp32 head and post-processing run unchanged."""
    prepared.backbone.features = fx_convert(prepared.backbone.features)
    return prepared.eval()


# Non-tensor entries of a quantized state_dict: packed linear params record their dtype, which
# checkpoints.save_model stores as its name.
_DTYPES = {str(d): d for d in (torch.qint8, torch.quint8, torch.float16, torch.float32)}


def torch_int8_from_checkpoint(payload: dict[str, Any], path: str | Path) -> nn.Module:
    """Rebuild a ``save_torch_int8`` file already read: the fp32 architecture at its stored
    (pruned) shapes -> the same FX prepare/convert (no calibration needed for the structure) ->
    load the int8 tensors, with the per-module format versions quantized modules need.

    The fp32 architecture is built on the ``meta`` device and allocated only at the shapes the
    file records, after checking that they hold no more parameters than the file has weights
    (``_check_shapes``): a small file cannot make this allocate a huge network."""
    meta, spec = payload["meta"], payload["spec"]
    detector = spec.get("task") == "detection"
    kind = TORCH_INT8_DETECTOR_KIND if detector else TORCH_INT8_KIND
    if meta.get("quantized") != kind:
        raise ShrinkflowError(
            f"{path}: int8 recipe {clip(repr(meta.get('quantized')))} is not the one this "
            f"version rebuilds for a {spec.get('task', 'classification')} model ({kind!r}); "
            "rerun the quantize stage"
        )
    shapes, input_shape = _check_shapes(payload, path)
    try:
        model = skeleton(spec, path)
        resize_to_state_dict(model, {k: torch.empty(s, device="meta") for k, s in shapes.items()})
        model.to_empty(device="cpu")
        _fill_fp32(model, spec)
        quantized = (convert_detector(prepare_detector(model, input_shape)) if detector
                     else fx_convert(fx_prepare(model, input_shape)))
        state = OrderedDict(
            (k, _DTYPES.get(v, v) if isinstance(v, str) else v)
            for k, v in payload["state_dict"].items()
        )
        state._metadata = OrderedDict(meta["state_versions"])  # type: ignore[attr-defined]
        quantized.load_state_dict(state)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ShrinkflowError(
            f"{path}: int8 model cannot be rebuilt from its spec and tensors ({clip(first)})"
        ) from None
    return quantized.eval()


def _stored_elements(value: Any) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel()
    if isinstance(value, (tuple, list)):
        return sum(_stored_elements(v) for v in value)
    return 0


def _check_shapes(payload: dict[str, Any], path: str | Path,
                  ) -> tuple[dict[str, list[int]], tuple[int, ...]]:
    """``meta.fp32_shapes`` and ``meta.input_shape``, typed and bounded: the fp32 model they
    describe may hold at most twice as many values as the file stores (conv-BN fusion folds
    4 values per channel into the int8 weights, so a real file is well under that)."""
    meta = payload["meta"]
    shapes, shape = meta.get("fp32_shapes"), meta.get("input_shape")
    if not (isinstance(shapes, dict) and shapes and all(
            isinstance(k, str) and isinstance(v, (list, tuple)) and len(v) <= 8
            and all(isinstance(d, int) and 0 <= d <= 2**31 for d in v)
            for k, v in shapes.items())):
        raise ShrinkflowError(f"{path}: meta.fp32_shapes: expected tensor names -> shapes")
    if not (isinstance(shape, (list, tuple)) and len(shape) == 3
            and all(isinstance(d, int) and 1 <= d <= MAX_SIDE for d in shape)):
        raise ShrinkflowError(f"{path}: meta.input_shape: expected C, H, W of 1..{MAX_SIDE}, "
                              f"got {clip(repr(shape))}")
    implied = sum(math.prod(v) for v in shapes.values())
    stored = sum(_stored_elements(v) for v in payload["state_dict"].values())
    if implied > 2 * stored:
        raise ShrinkflowError(f"{path}: meta.fp32_shapes: describe {implied} values but the file "
                              f"stores {stored}: not the shapes of this model")
    return {k: list(v) for k, v in shapes.items()}, tuple(shape)


def _fill_fp32(model: nn.Module, spec: dict[str, Any]) -> None:
    """Give a model fresh from ``to_empty`` defined values before FX prepares it: the int8
    tensors loaded afterwards replace the weights, but FX folds batch norms and computes
    observers from what is there, and uninitialised memory may hold NaN."""
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            tensor.zero_()
        for name, buffer in model.named_buffers():
            if name.endswith("running_var"):
                buffer.fill_(1)
        if spec.get("task") == "detection":  # FCOS normalises in its transform (no buffers)
            return
        model.mean.copy_(torch.tensor(spec["mean"]).view(1, -1, 1, 1))
        model.std.copy_(torch.tensor(spec["std"]).view(1, -1, 1, 1))
    if spec.get("input_size"):
        model.resize = Resize(spec["image_hw"], spec["input_size"])
