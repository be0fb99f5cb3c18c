"""Test-set metrics for any model of the pipeline, PyTorch or ONNX, computed the same way.

``load_predictor`` hides the runtime: a ``.pt`` fp32 model runs in PyTorch, a ``.pt`` int8 model
through torch.ao, an ``.onnx`` file through ONNX Runtime. All give float logits for uint8 images,
so every model lands in the same table with the same metrics.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from shrinkflow.errors import ShrinkflowError

Predict = Callable[[torch.Tensor], torch.Tensor]  # uint8 images -> float32 logits


@dataclass
class Predictor:
    predict: Predict
    params: int | None
    macs: int | None  # of the fp32 graph: int8 kernels are not counted by FLOP counters
    runtime: str


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, bins: int) -> float:
    """ECE: confidence-vs-accuracy gap averaged over equal-width confidence bins.

    Compression often keeps top-1 but makes a model over-confident; ECE shows that.
    """
    confidence, predicted = probs.max(1)
    correct = (predicted == labels).float()
    edges = torch.linspace(0, 1, bins + 1)
    ece = torch.zeros(())
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        in_bin = (confidence > lo) & (confidence <= hi)
        if in_bin.any():
            gap = (confidence[in_bin].mean() - correct[in_bin].mean()).abs()
            ece += gap * in_bin.float().mean()
    return float(ece)


def confusion_matrix(labels: torch.Tensor, predicted: torch.Tensor, num_classes: int) -> np.ndarray:
    """Rows: actual class, columns: predicted class."""
    flat = torch.bincount(labels * num_classes + predicted, minlength=num_classes**2)
    return flat.reshape(num_classes, num_classes).numpy()


def macro_f1(matrix: np.ndarray) -> float:
    """Unweighted mean of per-class F1; a class never predicted nor present scores 0."""
    tp = matrix.diagonal().astype(float)
    denom = matrix.sum(0) + matrix.sum(1)  # (tp + fp) + (tp + fn)
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    return float(f1.mean())


def classification_metrics(
    logits: torch.Tensor, labels: torch.Tensor, num_classes: int, ece_bins: int = 15
) -> dict[str, Any]:
    """Top-1, macro-F1, loss, ECE, per-class accuracy and the confusion matrix.

    Computed with torch/numpy rather than sklearn.metrics, whose import alone costs ~2 s in
    each of the six evaluate processes of a pipeline run.
    """
    predicted = logits.argmax(1)
    matrix = confusion_matrix(labels, predicted, num_classes)
    support = matrix.sum(1)
    per_class = np.divide(matrix.diagonal(), support, out=np.zeros(num_classes), where=support > 0)
    return {
        "acc": float((predicted == labels).float().mean()),
        "macro_f1": macro_f1(matrix),
        "loss": float(F.cross_entropy(logits, labels)),
        "ece": expected_calibration_error(logits.softmax(1), labels, ece_bins),
        "per_class_acc": per_class.tolist(),
        "support": support.tolist(),
        "confusion": matrix,
    }


def _batched(fn: Predict, batch_size: int) -> Predict:
    def predict(x: torch.Tensor) -> torch.Tensor:
        return torch.cat([fn(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])

    return predict


def load_predictor(
    path: str | Path, input_shape: tuple[int, ...], batch_size: int = 256
) -> Predictor:
    """Open any model artifact of the pipeline for inference on CPU.

    ``input_shape`` (C, H, W) is needed to count MACs of fp32 PyTorch models.
    """
    path = Path(path)
    if not path.is_file():
        raise ShrinkflowError(f"{path}: model file not found (has the stage that writes it run?)")
    if path.suffix == ".onnx":
        from shrinkflow.quantize import onnx_model_info, ort_session, predict_onnx

        session = ort_session(path)
        info = onnx_model_info(path)
        return Predictor(
            lambda x: predict_onnx(session, x, batch_size), info.get("params"),
            info.get("macs"), "onnxruntime",
        )
    from shrinkflow.artifacts import load_checkpoint, model_from_checkpoint
    from shrinkflow.models import count_macs, count_params
    from shrinkflow.train import to_input

    payload = load_checkpoint(path)
    if payload["meta"].get("quantized"):
        from shrinkflow.quantize import load_torch_int8

        module = load_torch_int8(path)
        params, macs = payload["meta"].get("params"), payload["meta"].get("macs")
        runtime = "torch-int8"
    else:
        module = model_from_checkpoint(payload, path)
        params, macs = count_params(module), count_macs(module, tuple(input_shape))
        runtime = "torch"

    @torch.inference_mode()
    def run(x: torch.Tensor) -> torch.Tensor:
        return module(to_input(x, torch.device("cpu"))).float()

    return Predictor(_batched(run, batch_size), params, macs, runtime)
