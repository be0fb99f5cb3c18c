"""Open any model file of the pipeline and run it: one object, whatever the runtime.

``open_model(path)`` reads the file once and returns a ``Model`` that says how it runs and what
it is, and runs batches of images:

* ``.pt`` fp32 (``model_files.pt.save_model``) -> PyTorch eager, runtime ``torch``;
* ``.pt`` int8 (``quantize.save_torch_int8``) -> a torch.ao FX int8 module, runtime
  ``torch_int8``, rebuilt from plain tensors (``model_files.torch_int8``);
* ``.onnx`` -> an ONNX Runtime CPU session, runtime ``onnxruntime`` (fp32 or int8).

Input: a torch batch (N, C, H, W) of uint8 images (0..255) or of floats already in [0, 1].
Output of ``predict``: float32 logits as a CPU ``torch.Tensor`` for every runtime (ORT's numpy
result is wrapped without a copy), so metrics code never branches on the runtime. uint8 images
are scaled exactly as ``training.loop.to_input`` does (float, then / 255): every runtime sees
bit-identical inputs, and a difference in logits is the runtime's or the quantizer's.

Timing code uses the two halves of ``predict``: ``prepare`` converts a batch once to what the
runtime takes natively (a tensor on the model's device, or a numpy array for ORT) and ``run`` is
the bare call, so a benchmark measures the model and not the conversion.

MACs are those of the fp32 graph: FLOP counters report 0 for int8 kernels, so int8 files carry
the MACs and params of the fp32 model they were made from (``.pt`` int8 in ``meta``, ``.onnx`` in
``metadata_props``), and every flavour of one model reports the same figures.

A damaged or mismatched file is a ``ShrinkflowError`` of one line naming the file; ``input_shape``
and ``num_classes``, when given, are checked against the model before any use.

This is the one opener of model files: stages, the benchmark and ``shrinkflow.cli.predict``
all go through ``open_model``. It imports onnxruntime but neither torch nor the ``onnx`` package
(~1 s): ONNX metadata is read through the ORT session, and torch is imported only when a ``.pt``
file is opened or a torch batch is run, so ``predict`` on an ONNX model starts without torch
(tests/unit/cli/test_predict.py runs it with ``import torch`` failing). A ``.pt`` file is checked
field by field and against its tensors before anything is built from it (``model_files.pt``).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnxruntime as ort

from shrinkflow.core.errors import ShrinkflowError

if TYPE_CHECKING:
    import torch
    from torch import nn


class Runtime(str, Enum):
    """How a model file runs. The one spelling of each runtime in the project."""

    TORCH = "torch"  # fp32 eager PyTorch
    TORCH_INT8 = "torch_int8"  # torch.ao FX int8 (x86 backend), CPU only
    ONNXRUNTIME = "onnxruntime"  # ONNX Runtime CPU session, fp32 or int8

    def __str__(self) -> str:
        return self.value


# Names and metadata keys of the ONNX files we export (``onnx_export``) and read back here.
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
META_MACS = "shrinkflow.macs"
META_PARAMS = "shrinkflow.params"
META_CLASSES = "shrinkflow.num_classes"
META_QUANTIZATION = "shrinkflow.quantization"  # set on int8 files by ``quantize``
META_DETECTOR = "shrinkflow.detector"  # a detector's spec as JSON (model_files.export_detector)


@dataclass
class Model:
    """An opened model file: what it is, and how to run it (see the module docstring)."""

    path: Path
    runtime: Runtime
    precision: str  # "fp32" | "int8"
    params: int | None  # of the fp32 model
    macs: int | None  # per image, of the fp32 graph; None when it cannot be known
    file_bytes: int
    input_shape: tuple[int | None, ...]  # (C, H, W); None where the model accepts any size
    num_classes: int | None
    device: Any  # torch.device for the torch runtimes; "cpu" for ORT
    meta: dict[str, Any] = field(repr=False)  # .pt: its meta (role, provenance); ONNX: metadata
    # native batch (from ``prepare``) -> native logits; call it under torch.inference_mode()
    run: Callable[[Any], Any] = field(repr=False)
    module: nn.Module | None = field(default=None, repr=False)  # torch runtimes only
    spec: dict[str, Any] | None = None  # the architecture spec of a .pt file
    # a detector (prepare.task: detection): one [0, 1] float32 (C, H, W) numpy image -> its
    # boxes, scores and labels as numpy; None for a classifier
    detect: Callable[[np.ndarray], tuple[np.ndarray, ...]] | None = field(default=None,
                                                                          repr=False)

    @property
    def device_type(self) -> str:
        """"cpu" or "cuda", whatever the runtime (ORT models hold no torch.device)."""
        return str(self.device).split(":")[0]

    def run_numpy(self, x: np.ndarray) -> np.ndarray:
        """float32 logits of a float32 NCHW numpy batch already scaled as the model expects
        (what ``shrinkflow.cli.predict`` feeds); torch is imported only for torch runtimes."""
        if self.runtime is Runtime.ONNXRUNTIME:
            return self.run(x)
        import torch

        with torch.inference_mode():
            return self.run(torch.from_numpy(x).to(self.device)).float().cpu().numpy()

    def prepare(self, x: torch.Tensor) -> Any:
        """A batch as this runtime takes it: [0, 1] float32 on the device, numpy for ORT."""
        x = x.float().div_(255) if str(x.dtype) == "torch.uint8" else x.float()
        if self.runtime is Runtime.ONNXRUNTIME:
            return np.ascontiguousarray(x.cpu().numpy())
        return x.to(self.device)

    def predict(self, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """float32 CPU logits of ``x`` (uint8 or [0, 1] float images), ``batch_size`` at a time."""
        import torch

        out = []
        with torch.inference_mode():
            for start in range(0, len(x), batch_size):
                logits = self.run(self.prepare(x[start : start + batch_size]))
                out.append(torch.as_tensor(logits).float().cpu())
        return torch.cat(out) if out else torch.empty(0, self.num_classes or 0)


def open_model(
    path: str | Path,
    input_shape: Sequence[int] | None = None,
    num_classes: int | None = None,
    threads: int = 0,
    device: str = "cpu",
) -> Model:
    """Open a ``.pt`` or ``.onnx`` model file for inference.

    ``input_shape`` (C, H, W of the data) is checked against the model and is the shape fp32
    MACs are counted at (an fp32 ``.pt`` does not record H, W; without it ``macs`` is None).
    ``num_classes`` is checked against the model's head. ``threads`` sets ONNX Runtime's
    intra-op threads (0 = ORT's default, all cores); PyTorch's are per process
    (``torch.set_num_threads``). ``device`` applies to fp32 PyTorch models; int8 kernels and
    our ORT sessions run on the CPU only.
    """
    path = Path(path)
    if not path.is_file():
        raise ShrinkflowError(f"{path}: model file not found (has the stage that writes it run?)")
    if path.stat().st_size == 0:
        raise ShrinkflowError(f"{path}: empty file (0 bytes), not a model")
    if path.suffix == ".onnx":
        model = _open_onnx(path, threads)
    elif path.suffix == ".pt":
        model = _open_pt(path, device, input_shape)
    else:
        raise ShrinkflowError(f"{path}: unknown model file type {path.suffix!r} "
                              "(expected .pt or .onnx)")
    check_fits(model, input_shape, num_classes)
    return model


def check_fits(
    model: Model, input_shape: Sequence[int] | None, num_classes: int | None
) -> None:
    """Fail in one line when the data's image shape or class count is not the model's."""
    if input_shape is not None:
        want = tuple(int(s) for s in input_shape)
        have = model.input_shape
        if len(want) != len(have) or any(
            h is not None and h != w for h, w in zip(have, want, strict=True)
        ):
            shown = "x".join("?" if s is None else str(s) for s in have)
            raise ShrinkflowError(
                f"{model.path}: the model takes {shown} images (C x H x W) but the data has "
                f"{'x'.join(map(str, want))}: was it built for other data?"
            )
    if num_classes is not None and model.num_classes not in (None, num_classes):
        raise ShrinkflowError(
            f"{model.path}: the model predicts {model.num_classes} classes but the data has "
            f"{num_classes}: was it built for other data?"
        )


# --- PyTorch (fp32 and int8) -------------------------------------------------------------------


def _open_pt(path: Path, device: str, input_shape: Sequence[int] | None) -> Model:
    # torch only here: the ONNX path must run without it (module docstring)
    import torch

    from shrinkflow.model_files.pt import load_checkpoint, model_from_checkpoint
    from shrinkflow.model_files.torch_int8 import torch_int8_from_checkpoint
    from shrinkflow.nets.zoo import count_macs, count_params

    with warnings.catch_warnings():
        # torch's own unpickling of quantized tensors warns about its deprecated internals
        warnings.filterwarnings("ignore", message="TypedStorage is deprecated")
        warnings.filterwarnings("ignore", message=".*quantized tensor creation functions")
        payload = load_checkpoint(path)
        meta, spec = payload["meta"], payload["spec"]
        module = torch_int8_from_checkpoint(payload, path) if meta.get("quantized") else None
    if module is not None:
        runtime, precision, where = Runtime.TORCH_INT8, "int8", torch.device("cpu")
        params, macs = meta.get("params"), meta.get("macs")
        shape: tuple[int | None, ...] = tuple(meta["input_shape"])
    else:
        where = torch.device(device)
        module = model_from_checkpoint(payload, path).to(where)
        runtime, precision = Runtime.TORCH, "fp32"
        params = count_params(module)
        shape = (spec["in_channels"], None, None)  # global pooling: any image size works
        macs = None
        if input_shape is not None and int(input_shape[0]) == spec["in_channels"]:
            macs = count_macs(module, tuple(int(s) for s in input_shape))
    detect = None
    if spec.get("task") == "detection":
        def detect(image: np.ndarray) -> tuple[np.ndarray, ...]:
            with torch.inference_mode():
                out = module([torch.from_numpy(image).to(where)])[0]
            return tuple(out[k].cpu().numpy() for k in ("boxes", "scores", "labels"))
    return Model(path, runtime, precision, params, macs, path.stat().st_size, shape,
                 spec.get("num_classes"), where, meta, run=module, module=module, spec=spec,
                 detect=detect)


# --- ONNX Runtime ------------------------------------------------------------------------------


def ort_session(path: str | Path, threads: int = 0) -> ort.InferenceSession:
    """An ONNX Runtime CPU session; ``threads`` = intra-op threads (0 = ORT's default, all cores).

    Benchmarks pin the thread count to compare runtimes fairly, hence the argument. A file ORT
    cannot load is one line naming it, not ORT's traceback.
    """
    path = Path(path)
    if not path.is_file():
        raise ShrinkflowError(f"{path}: ONNX model not found (has the stage that writes it run?)")
    options = ort.SessionOptions()
    options.intra_op_num_threads = int(threads)
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # warnings about unused initializers etc. are noise here
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own types (InvalidProtobuf, Fail, InvalidGraph...)
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise ShrinkflowError(f"{path}: not a loadable ONNX model ({reason})") from exc


def _int_or_none(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _open_onnx(path: Path, threads: int) -> Model:
    session = ort_session(path, threads)
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if len(inputs) != 1 or inputs[0].type != "tensor(float)" or len(inputs[0].shape) != 4:
        found = ", ".join(f"{i.name} {i.type} {i.shape}" for i in inputs)
        raise ShrinkflowError(f"{path}: expected one float32 NCHW image input, found {found}")
    meta = dict(session.get_modelmeta().custom_metadata_map)
    shape = tuple(d if isinstance(d, int) else None for d in inputs[0].shape[1:])
    head = outputs[0].shape[-1] if outputs and outputs[0].shape else None
    classes = head if isinstance(head, int) else _int_or_none(meta.get(META_CLASSES))
    input_name, output_name = inputs[0].name, outputs[0].name

    def run(x: np.ndarray) -> np.ndarray:
        return session.run([output_name], {input_name: x})[0]

    precision = "int8" if META_QUANTIZATION in meta else "fp32"
    spec, detect = None, None
    if META_DETECTOR in meta:  # boxes, scores and labels of one image (export_detector)
        spec = _detector_spec(meta[META_DETECTOR], path)
        classes = spec["num_classes"]

        def detect(image: np.ndarray) -> tuple[np.ndarray, ...]:
            return tuple(session.run(None, {input_name: image[None]}))
    return Model(path, Runtime.ONNXRUNTIME, precision, _int_or_none(meta.get(META_PARAMS)),
                 _int_or_none(meta.get(META_MACS)), path.stat().st_size, shape, classes,
                 "cpu", meta, run=run, spec=spec, detect=detect)


def _detector_spec(text: str, path: Path) -> dict[str, Any]:
    """A detector file's spec from its metadata, checked: predict names boxes by it."""
    try:
        spec = json.loads(text)
    except ValueError:
        spec = None
    classes = spec.get("classes") if isinstance(spec, dict) else None
    if not (isinstance(classes, list) and all(isinstance(c, str) for c in classes)
            and isinstance(spec.get("image_size"), int)
            and spec.get("num_classes") == len(classes)):
        raise ShrinkflowError(f"{path}: metadata {META_DETECTOR!r} is not a detector's spec "
                              "(classes, image_size, num_classes)")
    return spec
