"""Detectors (``prepare.task: detection``): torchvision's FCOS or RetinaNet (``model.detector``)
around the convolutional trunk of a classifier from the zoo (``nets.zoo.build_model``: the cnn's
stages, any torchvision classifier, a factory network); ``detector_spec`` records one in a model
file and ``build_detector`` builds it back.

Both are one-stage dense detectors: a prediction per cell of the backbone's feature map (FCOS)
or per anchor of each cell (RetinaNet: 3 scales x 3 aspect ratios), so a student with the
teacher's stride and family predicts at the teacher's points, and the per-point class logits
and box offsets are what detection distillation compares. FCOS is the default: anchor-free, one
head fits any stride without anchors tuned to the data; RetinaNet's anchors start at 4x the
stride, its paper's rule (32 px at stride 8). torchvision's models bring the losses (sigmoid
focal loss; GIoU and centre-ness for FCOS, L1 for RetinaNet), the box decoding and the NMS.
(Two-stage detectors, Faster R-CNN, are not built: their proposals differ between teacher and
student, so dense distillation has no common points to compare.)

Why the classifier's trunk: the backbone is the same network, built by the same code, as the
classifier of that name, so a user's classification weights for it (``teacher.init``: an
ImageNet-pretrained torchvision state_dict, a checkpoint, a shrinkflow classifier) load into it
the same way (``model_files.user_weights.load_into``) before its pooling and classifier head are
dropped.

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
from torchvision.models.detection import FCOS, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.fcos import (
    FCOSClassificationHead,
    FCOSHead,
    FCOSRegressionHead,
)
from torchvision.models.detection.retinanet import RetinaNetHead

from shrinkflow.core.errors import ShrinkflowError
from shrinkflow.nets.zoo import Classifier, build_model, make_spec

HEAD_CONVS = 2  # convolutions per head branch: torchvision's 4 is sized for COCO


NECK_WIDTH = 256  # torchvision's FPN width: the most channels a head reads


class Trunk(nn.Module):
    """A classifier's convolutional trunk as the detector's backbone: one feature map, its
    channels (``out_channels``, what torchvision's heads read) and ``stride`` (image side / map
    side). A trunk wider than ``NECK_WIDTH`` (resnet18's 512, mobilenet_v3_small's 576) gets a
    1x1 convolution down to it, the neck: the heads' 3x3 convolutions keep their input width,
    and at 512 they held 9.4 M of a resnet18 FCOS's 20.7 M parameters (2.4 M at 256)."""

    def __init__(self, features: nn.Module, out_channels: int, stride: int) -> None:
        super().__init__()
        self.features, self.stride = features, stride
        self.neck = nn.Conv2d(out_channels, NECK_WIDTH, 1) if out_channels > NECK_WIDTH \
            else None
        self.out_channels = min(out_channels, NECK_WIDTH)

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        x = self.features(x)
        return OrderedDict([("0", x if self.neck is None else self.neck(x))])


HEAD_TYPES = (nn.Linear, nn.AdaptiveAvgPool2d, nn.Flatten)


def _is_head(module: nn.Module) -> bool:
    """The global pooling or the classifier (or a Sequential holding one), where a classifier's
    trunk ends; only direct children count: squeeze-excitation blocks pool inside the trunk."""
    return isinstance(module, HEAD_TYPES) or any(isinstance(m, HEAD_TYPES)
                                                 for m in module.children())


def trunk_of(body: nn.Module, in_channels: int, image_size: int, key: str) -> Trunk:
    """The children of a zoo classifier's network up to its global pooling or classifier
    (the cnn's ``features``; a ResNet's stem to ``layer4``; a MobileNet's or EfficientNet's
    ``features``), checked to give one square feature map that divides the image."""
    kept = []
    for name, child in body.named_children():
        if _is_head(child):
            break
        kept.append((name, child))
    features = kept[0][1] if len(kept) == 1 else nn.Sequential(OrderedDict(kept))
    try:
        out = _probe(features, in_channels, image_size) if kept else None
    except (RuntimeError, ValueError, TypeError, AssertionError):
        out = None  # e.g. a transformer's encoder, which takes tokens, not an image
    if out is None or out.dim() != 4 or out.shape[2] != out.shape[3] or \
            image_size % out.shape[3]:
        got = "no feature map" if out is None else f"shape {list(out.shape)}"
        raise ShrinkflowError(f"{key}.arch: its trunk (the layers before global pooling) gives "
                              f"{got} on a {image_size} px image; detection needs one square "
                              "(N, C, H, W) feature map whose side divides the image (a "
                              "convolutional network: cnn, resnet, mobilenet, efficientnet, ...)")
    return Trunk(features, int(out.shape[1]), image_size // int(out.shape[3]))


def _probe(features: nn.Module, in_channels: int, image_size: int) -> torch.Tensor:
    """The trunk's output for one blank image, in eval mode: a training-mode pass would move
    the batch-norm running statistics of a freshly built network."""
    was_training = features.training
    device = next(features.parameters()).device
    features.eval()
    with torch.no_grad():
        out = features(torch.zeros(1, in_channels, image_size, image_size, device=device))
    features.train(was_training)
    return out


def build_fcos(backbone: Trunk, num_classes: int, image_size: int, mean: list[float],
               std: list[float], head_convs: int = HEAD_CONVS) -> FCOS:
    """An FCOS detector for square ``image_size`` images of ``num_classes`` classes.

    torchvision's transform would resize every image to 800 px; here its min and max size are the
    data's own, so images keep their size. One feature map, one point per cell (``anchor`` of one
    stride, only its position is used by FCOS). ``head_convs``: convolutions in each head branch
    (torchvision's default 4 is sized for COCO; 2 keeps a small detector small)."""
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


def build_retinanet(backbone: Trunk, num_classes: int, image_size: int, mean: list[float],
                    std: list[float], head_convs: int = HEAD_CONVS) -> RetinaNet:
    """A RetinaNet for square ``image_size`` images (sizes as ``build_fcos``): 9 anchors per
    cell, 3 scales an octave apart in thirds from 4x the stride, aspect ratios 1:2, 1:1, 2:1;
    each head branch cut to ``head_convs`` convolutions (torchvision builds 4) with GroupNorm."""
    base = backbone.stride * 4
    anchors = AnchorGenerator(sizes=(tuple(int(base * 2 ** (i / 3)) for i in range(3)),),
                              aspect_ratios=((0.5, 1.0, 2.0),))
    head = RetinaNetHead(backbone.out_channels, anchors.num_anchors_per_location()[0],
                         num_classes, norm_layer=_group_norm)
    for branch in (head.classification_head, head.regression_head):
        branch.conv = branch.conv[:head_convs]
    return RetinaNet(backbone, num_classes, min_size=image_size, max_size=image_size,
                     image_mean=mean, image_std=std, anchor_generator=anchors, head=head)


BUILDERS = {"fcos": build_fcos, "retinanet": build_retinanet}  # model.detector -> builder
NAMES = {"fcos": "FCOS", "retinanet": "RetinaNet"}


def detector_label(spec: dict[str, Any]) -> str:
    """``FCOS (cnn)``, ``RetinaNet (resnet18)``: a detector file's family and backbone, for
    the stages' summary lines."""
    return f"{NAMES[spec['detector']]} ({spec['arch']})"


def detector_losses(model: nn.Module, targets: list[dict[str, torch.Tensor]],
                    outputs: dict[str, torch.Tensor], anchors: list[torch.Tensor],
                    features: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """The detector's own training losses from its head's outputs (what its forward computes
    in training mode), for a loss that also needs those outputs (detection KD)."""
    if isinstance(model, FCOS):
        return model.compute_loss(targets, outputs, anchors,
                                  [f.size(2) * f.size(3) for f in features])
    return model.compute_loss(targets, outputs, anchors)


def _group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(32, channels), channels)


def detector_spec(model_params: Any, meta: dict[str, Any], key: str) -> dict[str, Any]:
    """A model file's spec for an FCOS detector whose backbone is the trunk of
    ``model_params``'s classifier (a ``ModelSpec``: the zoo's spec, ``nets.zoo.make_spec``) on
    the prepared detection data described by ``meta``. ``key`` names the params section in
    errors."""
    side = int(meta["shape"][1])
    spec = make_spec(model_params, int(meta["shape"][0]), int(meta["num_classes"]),
                     meta["mean"], meta["std"], image_hw=[side, side])
    spec = {"task": "detection", "detector": model_params.detector, **spec, "image_size": side,
            "classes": [str(c) for c in meta["classes"]]}  # predict names the boxes by them
    detector_stride(spec, key)  # a trunk FCOS cannot take fails here, before any work
    return spec


def build_detector(spec: dict[str, Any], classifier: Classifier | None = None,
                   key: str = "spec") -> FCOS | RetinaNet:
    """A detector from ``detector_spec``'s spec: freshly initialised (the seed is the caller's),
    or around the trunk of ``classifier``, built from the same spec (a user's weights already
    loaded into it). ``key`` names the params section in errors."""
    if classifier is None:
        classifier = build_model(spec)
    backbone = trunk_of(classifier.body, spec["in_channels"], spec["image_size"], key)
    return BUILDERS[spec["detector"]](backbone, spec["num_classes"], spec["image_size"],
                                      spec["mean"], spec["std"])


def detector_stride(spec: dict[str, Any], key: str = "spec") -> int:
    """The feature map's stride of ``spec``'s detector, built without memory (the meta device;
    a torchvision constructor that computes on tensors, RegNet's, is built for real)."""
    try:
        with torch.device("meta"):
            return build_detector(spec, key=key).backbone.stride
    except NotImplementedError:
        return build_detector(spec, key=key).backbone.stride
