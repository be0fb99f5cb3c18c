"""Test-set metrics from logits, the same for every model of the pipeline.

``model_files.open.open_model`` gives float32 logits for any model file (PyTorch fp32 or int8, ONNX
Runtime), so every model lands in the same table with the same metrics.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from shrinkflow.core.metric_keys import model_key
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


def write_evaluation(out: Any, metrics_dir: Path, name: str, model: Any, x: np.ndarray,
                     y: np.ndarray, classes: list[str], batch_size: int, ece_bins: int) -> dict:
    """Evaluate ``model`` (an opened model file, ``model_files.open``) on the test split and
    stage its three files in ``out`` (``core.outputs.commit_outputs``): ``eval_NAME.json`` (keys
    ``NAME_*``), ``confusion_NAME.csv`` (one row per test image, for DVC's confusion template)
    and ``per_class_NAME.csv``. Shared by evaluate@NAME and the ladder's rungs, so every
    candidate's figures are the same kind. Returns the metrics."""
    logits = model.predict(x, batch_size)
    m = classification_metrics(logits, y, len(classes), ece_bins)
    figures = {"acc": round(m["acc"], 6), "macro_f1": round(m["macro_f1"], 6),
               "loss": round(m["loss"], 6), "ece": round(m["ece"], 6), "params": model.params,
               "macs": model.macs, "file_bytes": model.file_bytes, "test_images": len(y)}
    pairs = zip(y.tolist(), logits.argmax(1).tolist(), strict=True)
    out.json(metrics_dir / f"eval_{name}.json",
             {model_key(name, field): value for field, value in figures.items()})
    out.csv(metrics_dir / f"confusion_{name}.csv", [
        {"actual": classes[a], "predicted": classes[b]} for a, b in pairs
    ])
    out.csv(metrics_dir / f"per_class_{name}.csv", [
        {"class": c, "accuracy": round(acc, 6), "support": n}
        for c, acc, n in zip(classes, m["per_class_acc"], m["support"], strict=True)
    ])
    return m
