"""Detectors (``prepare.task: detection``): torchvision's FCOS around a backbone of the same
VGG-style stages as the zoo's cnn classifier; ``detector_spec`` records one in a model file and
``build_detector`` builds it back.

Why FCOS first: it is anchor-free, one prediction point per cell of the backbone's feature map,
so one head fits any backbone stride without tuning anchor boxes to the data, and a student with
the teacher's stride predicts at the teacher's points: the per-point class logits and box
offsets are then what detection distillation compares. torchvision's model brings the losses
(sigmoid focal loss, GIoU, centre-ness), the box decoding and the NMS.

Images go in as torchvision's detection models take them: a list of float ``(C, H, W)`` tensors
in [0, 1]; in training mode with targets (``boxes`` ``(N, 4)`` pixels ``x0, y0, x1, y1``,
``labels`` ``(N,)`` class indices from 0), out come the three losses; in eval mode, per image,
``boxes``, ``scores`` and ``labels``.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any

import torch
from torch import nn
from torchvision.models.detection import FCOS
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.fcos import (
    FCOSClassificationHead,
    FCOSHead,
    FCOSRegressionHead,
)

from shrinkflow.core.errors import ShrinkflowError
from shrinkflow.nets.zoo import _cnn

HEAD_CONVS = 2  # convolutions per head branch: torchvision's 4 is sized for COCO


class CnnBackbone(nn.Module):
    """The cnn's stages without its pooling head: ``depth`` conv-BN-ReLU per width, a 2x max-pool
    between stages, so the feature map's stride is ``2 ** (len(widths) - 1)``."""

    def __init__(self, in_channels: int, widths: list[int], depth: int) -> None:
        super().__init__()
        # the classifier's own stages (one definition of the cnn), its pooling head dropped
        self.features = _cnn(in_channels, 1, widths, depth).features
        self.out_channels = widths[-1]  # what torchvision's heads read
        self.stride = 2 ** (len(widths) - 1)

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        return OrderedDict([("0", self.features(x))])


def build_fcos(in_channels: int, num_classes: int, widths: list[int], depth: int,
               image_size: int, mean: list[float], std: list[float],
               head_convs: int = HEAD_CONVS) -> FCOS:
    """An FCOS detector for square ``image_size`` images of ``num_classes`` classes.

    torchvision's transform would resize every image to 800 px; here its min and max size are the
    data's own, so images keep their size. One feature map, one point per cell (``anchor`` of one
    stride, only its position is used by FCOS). ``head_convs``: convolutions in each head branch
    (torchvision's default 4 is sized for COCO; 2 keeps a small detector small)."""
    backbone = CnnBackbone(in_channels, widths, depth)
    anchors = AnchorGenerator(sizes=((backbone.stride * 2,),), aspect_ratios=((1.0,),))
    # torchvision's head normalises with GroupNorm of 32 groups, which needs a multiple of 32
    # channels; a small backbone's 8 or 16 get the largest group count that divides them
    head = FCOSHead(backbone.out_channels, 1, num_classes, num_convs=0)
    head.classification_head = FCOSClassificationHead(
        backbone.out_channels, 1, num_classes, head_convs, norm_layer=_group_norm)
    head.regression_head = FCOSRegressionHead(backbone.out_channels, 1, head_convs,
                                              norm_layer=_group_norm)
    return FCOS(backbone, num_classes, min_size=image_size, max_size=image_size,
                image_mean=mean, image_std=std, anchor_generator=anchors, head=head)


def _group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(32, channels), channels)


def detector_spec(model_params: Any, meta: dict[str, Any], key: str) -> dict[str, Any]:
    """A model file's spec for an FCOS detector of ``model_params`` (a ``ModelSpec``: the cnn's
    widths and depth) on the prepared detection data described by ``meta``. ``key`` names the
    params section in the one-line error for an architecture FCOS cannot take."""
    if model_params.arch != "cnn":
        raise ShrinkflowError(f"{key}.arch = {model_params.arch!r}: detection builds FCOS "
                              "around the zoo's cnn stages; expected cnn (widths, depth)")
    return {"task": "detection", "detector": "fcos", "arch": "cnn",
            "widths": list(model_params.widths), "depth": int(model_params.depth),
            "in_channels": int(meta["shape"][0]), "num_classes": int(meta["num_classes"]),
            "image_size": int(meta["shape"][1]), "mean": [float(m) for m in meta["mean"]],
            "std": [float(s) for s in meta["std"]],
            "classes": [str(c) for c in meta["classes"]]}  # predict names the boxes by them


def build_detector(spec: dict[str, Any]) -> FCOS:
    """A freshly initialised detector from ``detector_spec``'s spec (the seed is the
    caller's)."""
    return build_fcos(spec["in_channels"], spec["num_classes"], spec["widths"], spec["depth"],
                      spec["image_size"], spec["mean"], spec["std"])
