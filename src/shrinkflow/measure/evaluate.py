"""Test-set metrics from logits, the same for every model of the pipeline.

``model_files.open.open_model`` gives float32 logits for any model file (PyTorch fp32 or int8, ONNX
Runtime), so every model lands in the same table with the same metrics.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from shrinkflow.measure.metrics import accuracy


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
        "acc": accuracy(logits, labels),
        "macro_f1": macro_f1(matrix),
        "loss": float(F.cross_entropy(logits, labels)),
        "ece": expected_calibration_error(logits.softmax(1), labels, ece_bins),
        "per_class_acc": per_class.tolist(),
        "support": support.tolist(),
        "confusion": matrix,
    }
