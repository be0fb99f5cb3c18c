"""Int8 quantization and the ONNX side of shrinkflow: export, run, quantize, store safely.

Two int8 flavours are produced from the same fp32 model, because they deploy to different places:

* ONNX Runtime (``quantize_onnx_static`` / ``quantize_onnx_dynamic``): a plain ``.onnx`` file
  that runs anywhere ORT does, no PyTorch needed.
* PyTorch-native (``quantize_torch_fx``): ``torch.ao.quantization`` FX graph mode with the x86
  backend. ``torch.ao.quantization`` is deprecated upstream in favour of torchao's PT2E flow, but
  PT2E's X86 quantizer fails on torchvision's resnet18 ("Input partition has more than one output
  node": its BasicBlock reuses one ReLU module), so FX is used; the backend sits behind
  ``quantize_torch_fx`` / ``save_torch_int8`` / ``load_torch_int8`` so it can be swapped later.

A quantized torch module cannot be pickled safely, so ``save_torch_int8`` stores only tensors and
plain data in the project's model format (the fp32 spec and layer shapes, the int8 state_dict,
``meta.quantized`` marking it as int8) and ``load_torch_int8`` rebuilds the module by re-running
the same prepare/convert steps on the fp32 architecture, then loads the tensors.
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from shrinkflow.artifacts import MODEL_FORMAT, atomic_path, load_checkpoint
from shrinkflow.errors import ShrinkflowError
from shrinkflow.models import build_model, count_macs, count_params, resize_to_state_dict

if TYPE_CHECKING:
    import onnxruntime

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
META_MACS = "shrinkflow.macs"
META_PARAMS = "shrinkflow.params"
META_CLASSES = "shrinkflow.num_classes"


# --- running ONNX models (used by evaluate and benchmark too) --------------------------------


def ort_session(path: str | Path, threads: int = 0) -> onnxruntime.InferenceSession:
    """An ONNX Runtime CPU session; ``threads`` = intra-op threads (0 = ORT's default, all cores).

    Benchmarks need the thread count pinned to compare runtimes fairly, hence the argument.
    """
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise ShrinkflowError(f"{path}: ONNX model not found (has the quantize stage run?)")
    options = ort.SessionOptions()
    options.intra_op_num_threads = int(threads)
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # warnings about unused initializers etc. are noise here
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def predict_onnx(
    session_or_path: onnxruntime.InferenceSession | str | Path,
    x: torch.Tensor,
    batch_size: int = 256,
) -> torch.Tensor:
    """Float32 logits (torch, CPU) of uint8 images ``x`` run through an ONNX model.

    Scales exactly as ``train.to_input`` does (float, then / 255), so ONNX and PyTorch see
    bit-identical inputs and any difference in logits is the runtime's or the quantizer's.
    """
    session = session_or_path
    if isinstance(session, (str, Path)):
        session = ort_session(session)
    input_name = session.get_inputs()[0].name
    out = []
    for start in range(0, len(x), batch_size):
        batch = x[start : start + batch_size].float().div_(255).numpy()
        out.append(torch.from_numpy(np.asarray(session.run(None, {input_name: batch})[0])))
    return torch.cat(out).float() if out else torch.empty(0)


def onnx_metadata(path: str | Path) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX file (MACs, params, class count written at export)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in model.metadata_props}


# --- export ---------------------------------------------------------------------------------


def _set_metadata(model: Any, meta: dict[str, str]) -> None:
    """Add or overwrite ``metadata_props`` entries of an in-memory onnx.ModelProto."""
    existing = {p.key: p for p in model.metadata_props}
    for key, value in meta.items():
        if key in existing:
            existing[key].value = str(value)
        else:
            entry = model.metadata_props.add()
            entry.key, entry.value = key, str(value)


def export_onnx(
    model: nn.Module, input_shape: tuple[int, ...], path: str | Path, opset: int = 17
) -> dict[str, str]:
    """Export an fp32 model to ONNX (dynamic batch, input "input", output "logits"), atomically.

    Uses the TorchScript exporter (``dynamo=False``): it writes one self-contained file, while
    the dynamo exporter puts weights in a side file. The file carries the fp32 model's MACs,
    parameter count and class count as metadata, because int8 graphs cannot be counted and
    evaluate/benchmark should report the same MACs for every flavour of one model.
    Returns the metadata written.
    """
    import onnx

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
        proto = onnx.load(str(tmp))
        _set_metadata(proto, meta)
        onnx.save(proto, str(tmp))
    return meta


# --- calibration data ------------------------------------------------------------------------


def select_calibration(x_train: torch.Tensor, samples: int, seed: int) -> torch.Tensor:
    """``samples`` uint8 images drawn without replacement from the train split, seeded.

    Calibration must never see the test split (that would tune scales on the data we report),
    and must be reproducible, so the draw uses its own ``torch.Generator``. Asking for more
    images than exist is an error rather than a silent cap, so params.yaml says what was used.
    """
    available = len(x_train)
    if samples < 1 or samples > available:
        raise ShrinkflowError(
            f"quantize.calibration_samples = {samples}: must be between 1 and the number of "
            f"train images ({available})"
        )
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(available, generator=generator)[:samples]
    return x_train[order.sort().values]


def _calibration_reader(x: torch.Tensor, input_name: str, batch_size: int = 32) -> Any:
    """An ORT CalibrationDataReader feeding uint8 images as [0, 1] floats, in fixed batches."""
    from onnxruntime.quantization import CalibrationDataReader

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = [
                x[i : i + batch_size].float().div_(255).numpy()
                for i in range(0, len(x), batch_size)
            ]
            self.position = 0

        def get_next(self) -> dict[str, np.ndarray] | None:
            if self.position >= len(self.batches):
                return None
            self.position += 1
            return {input_name: self.batches[self.position - 1]}

        def rewind(self) -> None:
            self.position = 0

    return _Reader()


# --- ONNX Runtime int8 -----------------------------------------------------------------------


def _preprocess(fp32_path: Path, out_path: Path) -> None:
    """ORT's recommended pre-pass: shape inference + graph optimisation (folds BN into conv)."""
    from onnxruntime.quantization import quant_pre_process

    quant_pre_process(str(fp32_path), str(out_path), skip_symbolic_shape=True)


def _copy_metadata(src: Path, dst: Path, extra: dict[str, str]) -> None:
    """The quantizer drops ``metadata_props``; put the fp32 model's MACs/params/classes back."""
    import onnx

    meta = onnx_metadata(src)
    meta.update(extra)
    proto = onnx.load(str(dst))
    _set_metadata(proto, meta)
    onnx.save(proto, str(dst))


CALIBRATION_METHODS = ("minmax", "entropy", "percentile")


def quantize_onnx_static(
    fp32_path: str | Path,
    out_path: str | Path,
    calibration_x: torch.Tensor,
    per_channel: bool = True,
    reduce_range: bool = True,
    method: str = "minmax",
) -> None:
    """Static int8 (QDQ; uint8 activations, int8 weights) with activation ranges calibrated on
    ``calibration_x`` (uint8 images). Written atomically to ``out_path``.

    ``reduce_range`` (7-bit weights) matters on x86 CPUs without VNNI: with plain 8-bit the
    int16 accumulation in ORT's u8s8 kernels saturates (measured ~24 dB output SQNR vs ~36 dB).
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    methods = dict(zip(CALIBRATION_METHODS, (CalibrationMethod.MinMax, CalibrationMethod.Entropy,
                                             CalibrationMethod.Percentile), strict=True))
    if method not in methods:
        raise ShrinkflowError(
            f"quantize.calibration_method = {method!r}: expected one of {', '.join(methods)}"
        )
    fp32_path, out_path = Path(fp32_path), Path(out_path)
    with atomic_path(out_path) as tmp, tempfile.TemporaryDirectory() as scratch:
        pre = Path(scratch) / "preprocessed.onnx"
        _preprocess(fp32_path, pre)
        input_name = ort_session(pre).get_inputs()[0].name
        quantize_static(
            str(pre),
            str(tmp),
            calibration_data_reader=_calibration_reader(calibration_x, input_name),
            quant_format=QuantFormat.QDQ,
            per_channel=per_channel,
            reduce_range=reduce_range,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=methods[method],
        )
        _copy_metadata(fp32_path, tmp, {"shrinkflow.quantization": f"static-{method}"})


def quantize_onnx_dynamic(
    fp32_path: str | Path, out_path: str | Path, per_channel: bool = True,
    reduce_range: bool = True,
) -> None:
    """Dynamic int8: weights stored as int8, activations quantized on the fly per batch.

    ORT's dynamic mode turns Conv into ConvInteger and the linear head into MatMulInteger, each
    preceded by a DynamicQuantizeLinear of its input; pooling and ReLU stay fp32. Weights are
    QUInt8: ORT 1.32 also runs int8-weight ConvInteger, but its uint8 path was faster here.
    No calibration data is needed, but every conv re-quantizes its input at run time and
    ConvInteger is not a fast kernel: on a 1.1M-param CNN at batch 64 dynamic ran ~3x SLOWER
    than fp32 while static ran ~2.5x faster. Dynamic is for size (and Linear-heavy models).
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    fp32_path, out_path = Path(fp32_path), Path(out_path)
    with atomic_path(out_path) as tmp, tempfile.TemporaryDirectory() as scratch:
        pre = Path(scratch) / "preprocessed.onnx"
        _preprocess(fp32_path, pre)
        quantize_dynamic(
            str(pre), str(tmp), per_channel=per_channel, reduce_range=reduce_range,
            weight_type=QuantType.QUInt8,
        )
        _copy_metadata(fp32_path, tmp, {"shrinkflow.quantization": "dynamic"})


# --- PyTorch-native int8 (torch.ao.quantization FX graph mode) -------------------------------

# Saved under the project's model format (so ``artifacts.load_checkpoint`` reads it, and
# evaluate finds the fp32 params/MACs in its meta); ``meta["quantized"]`` tells int8 files apart.
TORCH_INT8_KIND = "torch.ao-fx-x86/1"
TORCH_BACKEND = "x86"


def _fx_prepare(model: nn.Module, input_shape: tuple[int, ...]) -> nn.Module:
    """Fuse conv-BN-ReLU and insert observers (x86 qconfig); deterministic given the model."""
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import prepare_fx

    torch.backends.quantized.engine = TORCH_BACKEND
    example = (torch.zeros(1, *input_shape),)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecation notices of torch.ao.quantization
        return prepare_fx(model.eval(), get_default_qconfig_mapping(TORCH_BACKEND), example)


def _fx_convert(prepared: nn.Module) -> nn.Module:
    from torch.ao.quantization.quantize_fx import convert_fx

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # also "must run observer before calling calculate_qparams"
        return convert_fx(prepared).eval()


@torch.no_grad()
def quantize_torch_fx(
    model: nn.Module, calibration_x: torch.Tensor, batch_size: int = 64
) -> nn.Module:
    """Post-training static int8 of a [0, 1]-input model, calibrated on uint8 images.

    The fp32 ``model`` is deep-copied, not modified. The result runs on CPU only.
    """
    import copy

    input_shape = tuple(calibration_x.shape[1:])
    prepared = _fx_prepare(copy.deepcopy(model).cpu(), input_shape)
    for start in range(0, len(calibration_x), batch_size):
        prepared(calibration_x[start : start + batch_size].float().div_(255))
    return _fx_convert(prepared)


def _plain_state(state: dict[str, Any]) -> tuple[dict[str, Any], dict[str, dict[str, int]]]:
    """Quantized state_dict as plain data: its one non-tensor entry (the dtype of packed linear
    params) becomes a string, and the per-module format versions, which quantized modules need to
    parse their entries, are returned explicitly (a state_dict hides them in an attribute)."""
    tensors = {k: str(v) if isinstance(v, torch.dtype) else v for k, v in state.items()}
    versions = {k: dict(v) for k, v in getattr(state, "_metadata", {}).items()}
    return tensors, versions


def _restore_state(tensors: dict[str, Any], versions: dict[str, Any]) -> dict[str, Any]:
    from collections import OrderedDict

    dtypes = {str(d): d for d in (torch.qint8, torch.quint8, torch.float16, torch.float32)}
    state = OrderedDict(
        (k, dtypes[v] if isinstance(v, str) and v in dtypes else v) for k, v in tensors.items()
    )
    state._metadata = OrderedDict(versions)  # type: ignore[attr-defined]
    return state


def save_torch_int8(
    path: str | Path,
    fp32_model: nn.Module,
    spec: dict[str, Any],
    calibration_x: torch.Tensor,
    **meta: Any,
) -> nn.Module:
    """Quantize ``fp32_model`` with FX, store it safely, and return the quantized module.

    The file holds the fp32 spec, the fp32 tensor shapes (so pruned layers can be rebuilt), the
    input shape and the int8 state_dict: everything ``load_torch_int8`` needs, no pickled code.
    ``meta`` gets the fp32 model's params and MACs, which cannot be counted on int8 modules.
    """
    input_shape = tuple(int(s) for s in calibration_x.shape[1:])
    quantized = quantize_torch_fx(fp32_model, calibration_x)
    tensors, versions = _plain_state(quantized.state_dict())
    payload = {
        "format": MODEL_FORMAT,
        "spec": spec,
        "state_dict": tensors,
        "meta": {
            **meta,
            "quantized": TORCH_INT8_KIND,
            "params": count_params(fp32_model),
            "macs": count_macs(fp32_model, input_shape),
        },
        "state_versions": versions,
        "input_shape": list(input_shape),
        "fp32_shapes": {k: list(v.shape) for k, v in fp32_model.state_dict().items()},
    }
    # through a file handle: given a path, torch.save names the zip's root folder after the
    # (random) temp file, and identical models would give different bytes and DVC hashes
    with atomic_path(path) as tmp, tmp.open("wb") as fh:
        torch.save(payload, fh)
    return quantized


def load_torch_int8(path: str | Path) -> nn.Module:
    """Rebuild a model saved by ``save_torch_int8``: fp32 architecture at its stored (pruned)
    shapes -> the same FX prepare/convert (no calibration needed for the structure) -> load the
    int8 tensors. The file is read with ``weights_only=True``; the result runs on CPU only."""
    with warnings.catch_warnings():  # torch's own quantized-tensor unpickling uses TypedStorage
        warnings.filterwarnings("ignore", message="TypedStorage is deprecated")
        payload = load_checkpoint(path)
    kind = payload["meta"].get("quantized")
    if kind != TORCH_INT8_KIND:
        raise ShrinkflowError(
            f"{path}: not a PyTorch int8 model (meta.quantized = {kind!r}, expected "
            f"{TORCH_INT8_KIND!r}); fp32 models load with artifacts.load_model"
        )
    model = build_model(payload["spec"])
    resize_to_state_dict(model, {k: torch.empty(s) for k, s in payload["fp32_shapes"].items()})
    quantized = _fx_convert(_fx_prepare(model, tuple(payload["input_shape"])))
    quantized.load_state_dict(_restore_state(payload["state_dict"], payload["state_versions"]))
    return quantized.eval()


def is_torch_int8_file(path: str | Path) -> bool:
    """True when ``path`` is a ``save_torch_int8`` file (lets callers pick the right loader)."""
    try:
        return load_checkpoint(path)["meta"].get("quantized") == TORCH_INT8_KIND
    except ShrinkflowError:
        return False


def onnx_model_info(path: str | Path) -> dict[str, int | None]:
    """Params, MACs (of the fp32 source model) and class count stored in an ONNX file's
    metadata by ``export_onnx``; None for files exported elsewhere."""
    meta = onnx_metadata(path)

    def as_int(key: str) -> int | None:
        try:
            return int(meta[key])
        except (KeyError, ValueError):
            return None

    return {"params": as_int(META_PARAMS), "macs": as_int(META_MACS),
            "num_classes": as_int(META_CLASSES)}


# --- comparisons -----------------------------------------------------------------------------


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float((logits.argmax(1) == labels).float().mean()) if len(labels) else 0.0


def compare_logits(reference: torch.Tensor, other: torch.Tensor) -> dict[str, float]:
    """Max absolute logit difference and top-1 agreement of ``other`` with ``reference``."""
    return {
        "max_abs_diff": float((reference - other).abs().max()) if len(reference) else 0.0,
        "agreement": accuracy(other, reference.argmax(1)),
    }


def parity_metrics(
    fp32_model: nn.Module,
    fp32_onnx: str | Path,
    int8_onnx: str | Path,
    int8_torch: nn.Module,
    test: tuple[torch.Tensor, torch.Tensor],
    threads: int = 0,
) -> dict[str, float]:
    """Test-split checks that each converted model still is the model it came from.

    ONNX fp32 must match PyTorch fp32 to float precision (an export bug shows up here, not in
    accuracy); each int8 flavour is compared with the fp32 model of its own lineage.
    """
    from shrinkflow.train import predict

    x, y = test
    cpu = torch.device("cpu")
    ref = predict(fp32_model.cpu().eval(), x, device=cpu)
    onnx_fp32 = predict_onnx(ort_session(fp32_onnx, threads), x)
    onnx_int8 = predict_onnx(ort_session(int8_onnx, threads), x)
    torch_int8 = predict(int8_torch, x, device=cpu)
    export = compare_logits(ref, onnx_fp32)
    fp32_acc, int8_acc = accuracy(ref, y), accuracy(onnx_int8, y)
    return {
        "onnx_max_abs_diff": export["max_abs_diff"],
        "onnx_agreement": export["agreement"],
        "fp32_test_acc": fp32_acc,
        "int8_test_acc": int8_acc,
        "acc_drop_points": round(100 * (fp32_acc - int8_acc), 4),
        "int8_agreement": compare_logits(onnx_fp32, onnx_int8)["agreement"],
        "torch_int8_test_acc": accuracy(torch_int8, y),
        "torch_int8_agreement": compare_logits(ref, torch_int8)["agreement"],
    }
