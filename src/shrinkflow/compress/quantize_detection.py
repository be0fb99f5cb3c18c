"""Int8 of a detector (``prepare.task: detection``; FCOS or RetinaNet alike): the two flavours the
classification pass makes (``compress.quantize``), limited to what int8 runs well.

* ONNX Runtime (``quantize_detector_onnx``): the detector's file from
  ``model_files.export_detector`` (post-processing inside), static QDQ int8 of its convolutions
  only (``op_types_to_quantize=["Conv"]``), backbone and head, calibrated one image per call as
  the file takes them. Everything else stays fp32: the input normalisation, GroupNorm and ReLU
  of the head, exp of the box offsets, box decoding, the score threshold, NMS and the top-k,
  where int8 would move boxes and scores for no speed (measured, docs/research.md: the MNIST
  scenes student lost 0.2 mAP points, 0.912 -> 0.910, its file 274 -> 194 KB).
* PyTorch (``save_torch_int8_detector``): torch.ao FX int8 (x86) of the backbone's
  conv-BN-ReLU stages only (``model_files.torch_int8.prepare_detector``); the head and the
  post-processing stay fp32 (why: ``model_files.torch_int8``'s docstring).

Only static mode: ``quantize.mode`` dynamic and qat are refused in one line before any work
(``check_detection_mode``). How close each int8 file stays to the fp32 detector is measured on
the test images (``detection_quantize_metrics``), not assumed.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from shrinkflow.compress.quantize import quantize_onnx_static, select_calibration, write_torch_int8
from shrinkflow.core.errors import ShrinkflowError
from shrinkflow.core.outputs import atomic_path
from shrinkflow.data.boxes import ImageBoxes
from shrinkflow.data.prepared_boxes import BoxSplit
from shrinkflow.measure.detection_metrics import detection_metrics
from shrinkflow.model_files.export_detector import Detections, box_parity
from shrinkflow.model_files.torch_int8 import (
    TORCH_INT8_DETECTOR_KIND,
    convert_detector,
    prepare_detector,
)

CONV_ONLY = ["Conv"]  # the ONNX ops made int8 (module docstring: what stays fp32)


def check_detection_mode(mode: str) -> None:
    """Refuse, before any work, the ``quantize.mode`` values detection does not run.

    qat: its fine-tune is the classification loop's (logits, KD on them). dynamic: ORT turns
    every convolution into ConvInteger with a DynamicQuantizeLinear of its input, which ran ~3x
    slower than fp32 on the classification CNN (``compress.quantize.quantize_onnx_dynamic``)
    and quantizes activations per call without calibration: nothing a detector would gain."""
    if mode == "qat":
        raise ShrinkflowError("quantize.mode = 'qat' not supported on detection data; "
                              "expected static")
    if mode != "static":
        raise ShrinkflowError(f"quantize.mode = {mode!r} not supported on detection data "
                              "(ONNX Runtime's dynamic int8 of convolutions is slower than "
                              "fp32); expected static")


def calibration_images(train: BoxSplit, samples: int, seed: int) -> torch.Tensor:
    """``samples`` seeded uint8 train images ``(N, C, H, W)``, the draw classification uses
    (``compress.quantize.select_calibration``): never the test images mAP is reported on."""
    return select_calibration(torch.from_numpy(train.images), samples, seed)


def quantize_detector_onnx(fp32_path: str | Path, out_path: str | Path,
                           calibration: torch.Tensor, per_channel: bool = True,
                           reduce_range: bool = True, method: str = "minmax") -> None:
    """Static int8 of the convolutions of a detector file, written atomically to ``out_path``;
    its metadata (the detector's spec) is kept and ``shrinkflow.quantization`` says
    ``static-conv-METHOD``."""
    quantize_onnx_static(fp32_path, out_path, calibration, per_channel, reduce_range, method,
                         label="static-conv", op_types=CONV_ONLY, calibration_batch=1)
    _drop_shape_annotations(out_path)


def _drop_shape_annotations(path: str | Path) -> None:
    """Remove the intermediate shapes (``value_info``) ORT's quantizer infers into the file.

    With them, ONNX Runtime's graph optimiser breaks the post-processing on an image with no
    candidate box: "Reshape node /detector/Reshape_2: input shape {0,2,2}, requested shape
    {0,-1}" (measured on an untrained tiny detector, ORT 1.32; the fp32 export, which has none,
    runs it). Without them the file runs, and nothing else reads them."""
    model = onnx.load(str(path))
    del model.graph.value_info[:]
    with atomic_path(path) as tmp:
        onnx.save(model, str(tmp))


@torch.no_grad()
def quantize_detector_torch(model: nn.Module, calibration: torch.Tensor) -> nn.Module:
    """A copy of ``model`` with its backbone stages int8, calibrated by running the whole
    detector on each uint8 image (so the observers see what the transform gives the backbone).
    ``model`` itself is not modified; the result runs on the CPU only."""
    prepared = prepare_detector(copy.deepcopy(model).cpu(), tuple(calibration.shape[1:]))
    for image in calibration:
        prepared([image.float().div(255)])
    return convert_detector(prepared)


def save_torch_int8_detector(path: str | Path, fp32_model: nn.Module, spec: dict[str, Any],
                             calibration: torch.Tensor, **meta: Any) -> nn.Module:
    """``quantize_detector_torch`` stored like the classification int8 file
    (``compress.quantize.write_torch_int8``: tensors and plain data, rebuilt on open by the same
    prepare/convert steps); returns the int8 detector. No MACs: the detector's are not counted
    (FLOP counters see nothing in int8 kernels, and torch-pruning's counter does not take
    FCOS's list of images)."""
    quantized = quantize_detector_torch(fp32_model, calibration)
    write_torch_int8(path, quantized, fp32_model, spec,
                     tuple(int(s) for s in calibration.shape[1:]), TORCH_INT8_DETECTOR_KIND,
                     **meta)
    return quantized


def detect_all(model: Any, images: list[np.ndarray]) -> list[Detections]:
    """``model.detect`` (``model_files.open``) of every image: what evaluate runs."""
    return [model.detect(image) for image in images]


def detection_quantize_metrics(
    truths: list[ImageBoxes], classes: list[str], fp32: list[Detections],
    onnx_fp32: list[Detections], onnx_int8: list[Detections], torch_int8: list[Detections],
) -> dict[str, float]:
    """Test-split checks from the detections of the four files on the same images: the fp32
    export against the PyTorch detector (``box_parity``: an export bug), each int8 flavour's mAP
    (``measure.detection_metrics``, evaluate's) and its agreement with the fp32 model of its own
    lineage (the share of images with the same number of boxes and the same labels)."""
    export = box_parity(fp32, onnx_fp32)
    fp32_map, int8_map, torch_map = (detection_metrics(d, truths, classes)["map"]
                                     for d in (fp32, onnx_int8, torch_int8))
    return {
        "onnx_max_abs_diff": export["max_abs_diff"],
        "onnx_agreement": export["agreement"],
        "fp32_test_map": fp32_map,
        "int8_test_map": int8_map,
        "map_drop_points": round(100 * (fp32_map - int8_map), 4),
        "int8_agreement": box_parity(onnx_fp32, onnx_int8)["agreement"],
        "torch_int8_test_map": torch_map,
        "torch_int8_agreement": box_parity(fp32, torch_int8)["agreement"],
    }
