"""A detector -> one ONNX file with its post-processing inside: box decoding, score
threshold, per-class NMS and the top detections, as torchvision runs them, so the file's outputs
are final boxes and a deployment needs nothing but ONNX Runtime.

The file takes one image, input ``"input"`` of shape ``(1, C, S, S)``, [0, 1] floats at the
detector's side ``S`` (the model normalises it), and gives ``"boxes"`` ``(N, 4)`` pixels
``x0, y0, x1, y1``, ``"scores"`` ``(N,)`` and ``"labels"`` ``(N,)`` class indices, N varying per
image. One image per call: torchvision's detectors take a list of images and post-process each
alone, which the trace keeps. Its metadata (``META_DETECTOR``) records the spec that
``shrinkflow-predict`` needs: classes, side and channels.

Checked by the export stage against the PyTorch detector on the test images
(``box_parity``): the TorchScript exporter traced FCOS with its NMS, and on 50 MNIST scenes the
ONNX boxes matched to 8e-6 px with the same count and labels (this commit's measurement).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from shrinkflow.core.errors import ShrinkflowError
from shrinkflow.core.outputs import atomic_path
from shrinkflow.model_files.export_onnx import write_metadata
from shrinkflow.model_files.open import INPUT_NAME, META_DETECTOR, META_PARAMS
from shrinkflow.nets.zoo import count_params

OUTPUTS = ["boxes", "scores", "labels"]
# fp32 export: boxes agree to float precision (measured 8e-6 px); more means a broken trace
MAX_BOX_DIFF = 1e-2  # pixels
# images whose ONNX detections must have the PyTorch ones' count and labels: a score right at
# the threshold may fall on the other side by float noise
MIN_AGREEMENT = 0.98
SPEC_KEYS = ("task", "detector", "classes", "image_size", "in_channels", "num_classes")

Detections = tuple[np.ndarray, np.ndarray, np.ndarray]  # boxes, scores, labels of one image


class OneImage(nn.Module):
    """A torchvision detector as a graph of one batched image in, three tensors out."""

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        self.detector = detector

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out = self.detector([x[0]])[0]
        return out["boxes"], out["scores"], out["labels"]


def export_detector(model: nn.Module, spec: dict[str, Any], path: str | Path,
                    opset: int = 17) -> dict[str, str]:
    """Export ``model`` (built from ``spec``) with its post-processing, atomically; returns the
    metadata written."""
    wrapped = OneImage(model.eval().cpu()).eval()
    example = torch.zeros(1, spec["in_channels"], spec["image_size"], spec["image_size"])
    meta = {META_DETECTOR: json.dumps({k: spec[k] for k in SPEC_KEYS}),
            META_PARAMS: str(count_params(model))}
    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and trace notes
        torch.onnx.export(wrapped, (example,), str(tmp), dynamo=False, opset_version=opset,
                          input_names=[INPUT_NAME], output_names=OUTPUTS,
                          do_constant_folding=True)
        write_metadata(tmp, meta)
    return meta


def box_parity(reference: list[Detections], other: list[Detections]) -> dict[str, float]:
    """How far ``other``'s detections are from ``reference``'s, image by image:
    ``agreement``, the fraction of images with the same number of boxes and the same labels,
    and ``max_abs_diff``, the largest box coordinate difference (pixels) among those."""
    same, worst = 0, 0.0
    for (b1, _, l1), (b2, _, l2) in zip(reference, other, strict=True):
        if len(b1) == len(b2) and np.array_equal(l1, l2):
            same += 1
            if len(b1):
                worst = max(worst, float(np.abs(np.asarray(b1) - np.asarray(b2)).max()))
    return {"agreement": same / max(len(reference), 1), "max_abs_diff": worst}


def check_box_parity(parity: dict[str, float], onnx_out: str | Path, source: str | Path) -> None:
    """Fail in one line when an exported detector's boxes (``box_parity`` against the PyTorch
    file ``source``) are outside the fp32 export's thresholds: the caller's outputs are then
    not replaced (export_onnx and quantize both write the file inside ``commit_outputs``)."""
    if parity["agreement"] < MIN_AGREEMENT or parity["max_abs_diff"] > MAX_BOX_DIFF:
        raise ShrinkflowError(
            f"{onnx_out}: exported detector differs from {source}: same boxes on "
            f"{parity['agreement']:.1%} of the test images (expected >= {MIN_AGREEMENT:.0%}),"
            f" up to {parity['max_abs_diff']:.2e} px apart (expected <= {MAX_BOX_DIFF:g}); "
            "nothing was replaced")
