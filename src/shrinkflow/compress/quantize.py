"""Producing int8 models: two flavours from one fp32 model, because they deploy to different places.

* ONNX Runtime (``quantize_onnx_static`` / ``quantize_onnx_dynamic``): a plain ``.onnx`` file
  that runs anywhere ORT does, no PyTorch needed. The fp32 input comes from
  ``model_files.export_onnx.export_onnx``.
* PyTorch-native (``save_torch_int8``): ``torch.ao.quantization`` FX graph mode with the x86
  backend. ``torch.ao.quantization`` is deprecated upstream in favour of torchao's PT2E flow;
  PT2E was tried for this file and works (exact weights_only round trip, resnet18 included once
  ``pt2e_export`` splits its twice-called ReLUs), but without ``torch.compile`` its graph lowered
  to oneDNN ran no faster than fp32: digits pruned model, 1 thread, batch 64 8.2 ms vs FX 3.4 ms
  (fp32 8.2 ms), batch 1 6.6 ms vs 1.5 ms. So FX stays for this file (docs/decisions.md);
  the recipe sits behind ``model_files.torch_int8.fx_prepare`` /
  ``model_files.torch_int8.fx_convert``.
* Quantization-aware training (``qat_finetune`` + ``quantize_qat_onnx``): ``prepare_qat_pt2e``
  fake quantization, fine-tuned in ``training.loop.fit`` with the caller's loss (KD from the
  teacher), then int8 ONNX for ONNX Runtime (see ``quantize_qat_onnx`` for why through ORT's
  quantizer).

A quantized torch module cannot be pickled safely, so ``save_torch_int8`` stores only tensors and
plain data through ``model_files.pt.save_model`` (the fp32 spec, the int8 state_dict, and in
``meta`` the fp32 layer shapes, input shape and ``quantized`` recipe);
``model_files.open.open_model`` rebuilds the module by re-running the same prepare/convert steps
on the fp32 architecture, then loads the tensors. Opening and running every model, int8 or not,
is ``model_files.open``'s job; the parity checks
here compare logits that callers get from it.
"""

from __future__ import annotations

import copy
import dataclasses
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quant_pre_process,
    quantize_dynamic,
    quantize_static,
)
from torch import nn

from shrinkflow.core.errors import ShrinkflowError
from shrinkflow.core.outputs import atomic_path
from shrinkflow.measure.metrics import accuracy, logit_parity
from shrinkflow.model_files.export_onnx import copy_metadata, export_onnx
from shrinkflow.model_files.open import META_QUANTIZATION, ort_session
from shrinkflow.model_files.pt import save_model
from shrinkflow.model_files.torch_int8 import TORCH_INT8_KIND, fx_convert, fx_prepare
from shrinkflow.nets.zoo import count_macs, count_params
from shrinkflow.params.common import TrainConfig
from shrinkflow.training.loop import LossFn, Split, fit

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
    quant_pre_process(str(fp32_path), str(out_path), skip_symbolic_shape=True)


CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
QUANT_FORMATS = {"qdq": QuantFormat.QDQ, "qoperator": QuantFormat.QOperator}
QUANT_TYPES = {"u8": QuantType.QUInt8, "s8": QuantType.QInt8}


def quantize_onnx_static(
    fp32_path: str | Path,
    out_path: str | Path,
    calibration_x: torch.Tensor,
    per_channel: bool = True,
    reduce_range: bool = True,
    method: str = "minmax",
    label: str = "static",
    quant_format: str = "qdq",
    activation_type: str = "u8",
    weight_type: str = "s8",
    op_types: list[str] | None = None,
    calibration_batch: int = 32,
) -> None:
    """Static int8 with activation ranges calibrated on ``calibration_x`` (uint8 images),
    written atomically to ``out_path``. Defaults: QDQ, uint8 activations, int8 weights.

    ``reduce_range`` (7-bit weights) matters on x86 CPUs without VNNI: with plain 8-bit the
    int16 accumulation in ORT's u8s8 kernels saturates (measured ~24 dB output SQNR vs ~36 dB).
    ``quant_format`` / ``activation_type`` / ``weight_type`` exist for
    ``benchmarks/int8_variants.py``, which measured the alternatives (docs/decisions.md): on
    the narrow MNIST pruned model none reached fp32 speed, and QOperator with int8 activations
    was the slowest, so the defaults stay those that keep accuracy best on this CPU.
    ``op_types`` limits int8 to those ONNX ops (None: every op ORT quantizes) and
    ``calibration_batch`` is the images per calibration call (1 for a one-image detector file):
    ``compress.quantize_detection`` uses both.
    """
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
            calibration_data_reader=_calibration_reader(calibration_x, input_name,
                                                        calibration_batch),
            quant_format=QUANT_FORMATS[quant_format],
            per_channel=per_channel,
            reduce_range=reduce_range,
            activation_type=QUANT_TYPES[activation_type],
            weight_type=QUANT_TYPES[weight_type],
            calibrate_method=methods[method],
            op_types_to_quantize=op_types,
        )
        copy_metadata(fp32_path, tmp, {META_QUANTIZATION: f"{label}-{method}"})


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
    fp32_path, out_path = Path(fp32_path), Path(out_path)
    with atomic_path(out_path) as tmp, tempfile.TemporaryDirectory() as scratch:
        pre = Path(scratch) / "preprocessed.onnx"
        _preprocess(fp32_path, pre)
        quantize_dynamic(
            str(pre), str(tmp), per_channel=per_channel, reduce_range=reduce_range,
            weight_type=QuantType.QUInt8,
        )
        copy_metadata(fp32_path, tmp, {META_QUANTIZATION: "dynamic"})


# --- quantization-aware training (PT2E, torchao) -------------------------------------------


def pt2e_export(model: nn.Module, input_shape: tuple[int, ...]) -> torch.fx.GraphModule:
    """``torch.export`` of ``model`` as PT2E quantizers take it: a GraphModule with a dynamic
    batch dimension (without it the quantized graph accepts only the example's batch size).

    A module called twice (torchvision's BasicBlock runs its one ``relu`` twice) gets one source
    partition per call: the X86 quantizer groups nodes by their module's name and fails on a
    group with two outputs ("Input partition has more than one output node", measured on
    resnet18). ``torch.export`` already tells the calls apart in the stack's key (``<fqn>@1``);
    the suffix is copied into the name the quantizer reads.
    """
    example = (torch.zeros(2, *input_shape),)
    batch = torch.export.Dim("batch", min=1, max=65_536)
    graph = torch.export.export(model, example, dynamic_shapes=({0: batch},)).module()
    for node in graph.graph.nodes:
        stack = node.meta.get("nn_module_stack")
        if stack:
            key, (fqn, kind) = list(stack.items())[-1]
            if "@" in key:
                stack[key] = (f"{fqn}@{key.rsplit('@', 1)[1]}", kind)
    return graph


def x86_quantizer(is_qat: bool, reduce_range: bool) -> Any:
    """torchao's X86 recipe (uint8 per-tensor activations, int8 per-channel symmetric weights).

    ``reduce_range`` here means what it means to ONNX Runtime's quantizer: 7-bit weights on
    ORT's symmetric grid -64..64 (scale = max |w| / 64, ``ONNX_INT_TYPE_REDUCED_RANGE``). QAT
    then trains against the rounding the ORT int8 model will apply; torchao's own
    ``reduce_range`` flag narrows the activations instead.
    """
    # torchao is imported here and in qat_finetune, not at the top: with it, `import
    # shrinkflow.compress.quantize` took 9.5 s instead of 3.4 s (torch._dynamo, triton kernels; 2
    # cores),
    # in every quantize run, and only quantize.mode qat needs it.
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
        X86InductorQuantizer,
        get_default_x86_inductor_quantization_config,
    )

    config = get_default_x86_inductor_quantization_config(is_qat=is_qat)
    if reduce_range:
        weight = dataclasses.replace(config.weight, quant_min=-64, quant_max=64)
        config = dataclasses.replace(config, weight=weight)
    return X86InductorQuantizer().set_global(config)


@dataclass
class QATResult:
    """What ``qat_finetune`` returns: the fake-quantized model (eval mode) whose predictions the
    int8 file must reproduce, the same weights as a plain fp32 module to export, the history."""

    fake_quant: torch.fx.GraphModule
    fp32: nn.Module
    history: list[dict[str, Any]]
    seconds: float


def qat_finetune(
    model: nn.Module,
    input_shape: tuple[int, ...],
    train: Split,
    val: Split,
    cfg: TrainConfig,
    loss_fn: LossFn | None = None,
    reduce_range: bool = True,
    log: Callable[[str], None] = print,
    params_key: str = "quantize.qat.train",
    loss_params: Mapping[str, Any] | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> QATResult:
    """Fine-tune a copy of ``model`` with fake quantization (PT2E ``prepare_qat_pt2e``, torchao's
    X86 recipe), in the one training loop (``training.loop.fit``) with ``loss_fn`` (KD from the
    teacher).

    The model is exported in train mode, so batch norm keeps updating its statistics and the
    QAT graph simulates conv-BN folding. The exported graph keeps the original parameter names,
    so the tuned weights load back into a deep copy of ``model``: that fp32 module is what
    ``quantize_qat_onnx`` exports. ``model`` itself is not modified.
    """
    # torchao here, not at the top: see x86_quantizer (6 s of imports only mode qat needs)
    from torchao.quantization.pt2e import (
        allow_exported_model_train_eval,
        move_exported_model_to_eval,
    )
    from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e

    graph = pt2e_export(copy.deepcopy(model).cpu().train(), input_shape)
    prepared = prepare_qat_pt2e(graph, x86_quantizer(is_qat=True, reduce_range=reduce_range))
    allow_exported_model_train_eval(prepared)  # fit switches train / eval per epoch
    start = time.perf_counter()
    history = fit(prepared, train, val, cfg, loss_fn=loss_fn, log=log, name="qat",
                  params_key=params_key, loss_params=loss_params, on_epoch=on_epoch)
    seconds = time.perf_counter() - start
    prepared = move_exported_model_to_eval(prepared.cpu())
    fp32 = copy.deepcopy(model).cpu().eval()
    tuned = prepared.state_dict()
    fp32.load_state_dict({key: tuned[key] for key in fp32.state_dict()})
    return QATResult(prepared, fp32, history, seconds)


def quantize_qat_onnx(
    qat: QATResult,
    out_path: str | Path,
    calibration_x: torch.Tensor,
    per_channel: bool = True,
    reduce_range: bool = True,
    method: str = "minmax",
    opset: int = 17,
) -> None:
    """int8 ONNX of a QAT model: its tuned fp32 weights through ORT's static quantizer (QDQ).

    Why this route and not the fake-quant graph itself: ORT runs int8 kernels (QLinearConv,
    QGemm) only for QDQ patterns its quantizer lays out (int8 initializers, zero-point-0
    weights, fused Conv-ReLU); torch's TorchScript ONNX exporter does not know PT2E's
    ``quantized_decomposed`` ops, and the dynamo exporter needs onnxscript, which the project
    does not depend on. QAT's gain is weights that sit well on the int8 grid; ORT's quantizer
    re-derives the same kind of grid (per-channel symmetric weights, 7-bit with ``reduce_range``
    as in ``x86_quantizer``, uint8 activations from ranges calibrated on the tuned model). How
    closely the result follows the fake-quantized model is measured, not assumed: the stage
    reports their agreement and accuracies.
    """
    with tempfile.TemporaryDirectory() as scratch:
        tuned = Path(scratch) / "qat_fp32.onnx"
        export_onnx(qat.fp32, tuple(calibration_x.shape[1:]), tuned, opset)
        quantize_onnx_static(tuned, out_path, calibration_x, per_channel, reduce_range, method,
                             label="qat")


# --- PyTorch-native int8 (torch.ao.quantization FX graph mode) -------------------------------


@torch.no_grad()
def quantize_torch_fx(
    model: nn.Module, calibration_x: torch.Tensor, batch_size: int = 64
) -> nn.Module:
    """Post-training static int8 of a [0, 1]-input model, calibrated on uint8 images.

    The fp32 ``model`` is deep-copied, not modified. The result runs on CPU only.
    """
    input_shape = tuple(calibration_x.shape[1:])
    prepared = fx_prepare(copy.deepcopy(model).cpu(), input_shape)
    for start in range(0, len(calibration_x), batch_size):
        prepared(calibration_x[start : start + batch_size].float().div_(255))
    return fx_convert(prepared)


def save_torch_int8(
    path: str | Path,
    fp32_model: nn.Module,
    spec: dict[str, Any],
    calibration_x: torch.Tensor,
    **meta: Any,
) -> nn.Module:
    """Quantize ``fp32_model`` with FX, store it through ``model_files.pt.save_model``, return it.

    ``meta`` gets everything ``model_files.open.open_model`` needs to rebuild the module (see
    ``write_torch_int8``) and the fp32 model's MACs, which cannot be counted on int8 modules.
    """
    input_shape = tuple(int(s) for s in calibration_x.shape[1:])
    quantized = quantize_torch_fx(fp32_model, calibration_x)
    write_torch_int8(path, quantized, fp32_model, spec, input_shape, TORCH_INT8_KIND,
                     macs=count_macs(fp32_model, input_shape), **meta)
    return quantized


def write_torch_int8(
    path: str | Path,
    quantized: nn.Module,
    fp32_model: nn.Module,
    spec: dict[str, Any],
    input_shape: tuple[int, ...],
    kind: str,
    macs: int | None = None,
    **meta: Any,
) -> None:
    """Store an int8 module made by recipe ``kind`` (``model_files.torch_int8``) through
    ``model_files.pt.save_model``: tensors and plain data only.

    ``meta`` gets the recipe, the fp32 tensor shapes (so pruned layers can be rebuilt), the
    input shape, the per-module state_dict format versions quantized modules need to parse their
    entries, and the fp32 model's params (and ``macs`` when known): int8 modules cannot be
    counted.
    """
    versions = getattr(quantized.state_dict(), "_metadata", {})
    counts = {"params": count_params(fp32_model), **({} if macs is None else {"macs": macs})}
    save_model(
        path, quantized, spec, **meta,
        quantized=kind,
        **counts,
        input_shape=list(input_shape),
        fp32_shapes={k: list(v.shape) for k, v in fp32_model.state_dict().items()},
        state_versions={k: dict(v) for k, v in versions.items()},
    )


# --- parity: is each converted model still the model it came from? -------------------------------


def parity_metrics(
    fp32: torch.Tensor,
    onnx_fp32: torch.Tensor,
    onnx_int8: torch.Tensor,
    torch_int8: torch.Tensor,
    labels: torch.Tensor,
) -> dict[str, float]:
    """Test-split checks from the logits of the four models on the same images.

    ONNX fp32 must match PyTorch fp32 to float precision (an export bug shows up here, not in
    accuracy); each int8 flavour is compared with the fp32 model of its own lineage. Callers get
    the logits from the saved files (``model_files.open.open_model``), so what is checked is what
    evaluate and benchmark will run.
    """
    export = logit_parity(fp32, onnx_fp32)
    fp32_acc, int8_acc = accuracy(fp32, labels), accuracy(onnx_int8, labels)
    return {
        "onnx_max_abs_diff": export["max_abs_diff"],
        "onnx_agreement": export["agreement"],
        "fp32_test_acc": fp32_acc,
        "int8_test_acc": int8_acc,
        "acc_drop_points": round(100 * (fp32_acc - int8_acc), 4),
        "int8_agreement": logit_parity(onnx_fp32, onnx_int8)["agreement"],
        "torch_int8_test_acc": accuracy(torch_int8, labels),
        "torch_int8_agreement": logit_parity(fp32, torch_int8)["agreement"],
    }
