"""A detector's PyTorch int8 file (model_files.torch_int8, made by
compress.quantize_detection.save_torch_int8_detector): its backbone int8 and its head fp32,
stored as plain tensors, rebuilt by open_model (weights only) into the same detector."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from tiny_detectors import untrained_detector

from shrinkflow.compress.quantize_detection import save_torch_int8_detector
from shrinkflow.core.errors import ShrinkflowError
from shrinkflow.model_files.open import Runtime, open_model
from shrinkflow.model_files.pt import load_checkpoint, write_checkpoint
from shrinkflow.model_files.torch_int8 import TORCH_INT8_DETECTOR_KIND, TORCH_INT8_KIND


@pytest.fixture(scope="module", params=["fcos", "retinanet"])
def int8_file(tmp_path_factory, request):
    """(path, in-memory int8 detector, fp32 detector) of a confident untrained [2, 4] FCOS or
    RetinaNet."""
    model, spec = untrained_detector([2, 4], detector=request.param)
    calibration = (torch.rand(8, 1, 32, 32, generator=torch.Generator().manual_seed(0)) * 255
                   ).to(torch.uint8)
    path = tmp_path_factory.mktemp("int8") / "quantized_torch.pt"
    quantized = save_torch_int8_detector(path, model, spec, calibration, role="quantized_torch")
    return path, quantized, model


def images(n: int = 3) -> list[np.ndarray]:
    return [np.random.default_rng(i).random((1, 32, 32), dtype=np.float32) for i in range(n)]


def test_the_file_reopens_weights_only_into_the_same_int8_detector(int8_file):
    path, quantized, fp32 = int8_file
    model = open_model(path)  # read with weights_only=True (model_files.pt.torch_load)
    assert model.meta["quantized"] == TORCH_INT8_DETECTOR_KIND
    assert (model.runtime, model.precision) == (Runtime.TORCH_INT8, "int8")
    assert model.params == sum(p.numel() for p in fp32.parameters())
    kinds = {m._get_name() for m in model.module.backbone.features.modules()}
    assert "QuantizedConvReLU2d" in kinds  # the backbone is int8 ...
    head = model.module.head.classification_head.cls_logits
    assert type(head) is torch.nn.Conv2d and head.weight.dtype == torch.float32  # ... the head not
    for image in images():
        with torch.inference_mode():
            direct = quantized([torch.from_numpy(image)])[0]
        boxes, scores, labels = model.detect(image)
        assert len(boxes) > 0
        assert np.array_equal(boxes, direct["boxes"].numpy())
        assert np.array_equal(scores, direct["scores"].numpy())
        assert np.array_equal(labels, direct["labels"].numpy())


def test_a_file_of_another_recipe_is_one_line(int8_file, tmp_path):
    path, _, _ = int8_file
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's notice on unpickling quantized tensors
        payload = load_checkpoint(path)
    payload["meta"]["quantized"] = TORCH_INT8_KIND  # a classifier's recipe on a detector spec
    write_checkpoint(tmp_path / "other.pt", payload)
    with pytest.raises(ShrinkflowError, match=r"other\.pt: int8 recipe 'torch\.ao-fx-x86/1' is "
                                              r"not the one this version rebuilds for a "
                                              r"detection model"):
        open_model(tmp_path / "other.pt")
