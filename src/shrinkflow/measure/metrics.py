"""Accuracy and logit parity: the two figures every stage that runs a model reports.

``accuracy`` is top-1 against labels. ``logit_parity`` is the one check that a converted model
(ONNX export, int8, a distilled student against its teacher) still is the model it came from:
max absolute logit difference (an export bug shows at float precision) and top-1 agreement (what
a user of the predictions sees). Both work on any logits tensor and import nothing heavy, so the
training loop, the compression passes and evaluate share them without depending on each other.
"""

from __future__ import annotations

import torch


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy of ``logits`` (N, classes) against integer ``labels`` (N,); 0.0 if empty."""
    return float((logits.argmax(1) == labels).float().mean()) if len(labels) else 0.0


def logit_parity(reference: torch.Tensor, other: torch.Tensor) -> dict[str, float]:
    """How closely ``other``'s logits follow ``reference``'s on the same images: max absolute
    difference and top-1 agreement (1.0 on no images: nothing disagrees)."""
    if reference.shape != other.shape:
        raise ValueError(f"logit shapes differ: {tuple(reference.shape)} vs {tuple(other.shape)}")
    if not len(reference):
        return {"max_abs_diff": 0.0, "agreement": 1.0}
    return {
        "max_abs_diff": float((reference - other).abs().max()),
        "agreement": accuracy(other, reference.argmax(1)),
    }
