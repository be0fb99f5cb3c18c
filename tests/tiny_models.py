"""Small models several test files share: the spec of a student that downsamples its input
(``distill.input_size``), a CNN trained for a few epochs (real weights, so int8 error and
agreement mean something), and a tiny FCOS detector that finds boxes."""

from __future__ import annotations

from typing import Any

import torch

from shrinkflow.data.prepared import Prepared
from shrinkflow.nets.detectors import build_detector, detector_spec
from shrinkflow.nets.zoo import build_model, make_spec
from shrinkflow.params.common import ModelSpec, TrainConfig
from shrinkflow.training.loop import fit, seed_everything

FULL = (1, 16, 16)  # the data's images; a downsampled student's network sees smaller ones


def downsampled_spec(input_size: int = 0, widths: tuple[int, ...] = (8, 16)) -> dict:
    """A 1-channel CNN spec for FULL-size images, resized to ``input_size`` inside the model
    (0: no resize)."""
    return make_spec(ModelSpec(widths=list(widths), depth=1), FULL[0], 4, [0.3], [0.3],
                     input_size, list(FULL[1:]))


def train_cnn(data: Prepared, widths: list[int],
                input_size: int = 0) -> tuple[torch.nn.Module, dict]:
    """A small CNN trained for 3 epochs on ``data`` (1 channel, 4 classes), downsampling its
    input to ``input_size`` if given; (model in eval mode, spec)."""
    seed_everything(0)
    meta = data.meta
    spec = make_spec(ModelSpec(widths=widths, depth=1), 1, 4, meta["mean"], meta["std"],
                     input_size, list(meta["shape"][1:]))
    model = build_model(spec)
    fit(model, data.train, data.val, TrainConfig(epochs=3, batch_size=32, device="cpu"),
        log=lambda _: None)
    return model.eval(), spec


def tiny_detector(shape: tuple[int, int, int] | list[int]) -> tuple[torch.nn.Module, dict]:
    """A seeded tiny FCOS (2 classes) on ``shape`` images and its spec, with its class bias
    raised so that it returns boxes above the score threshold (an untrained one finds none)."""
    meta = {"shape": list(shape), "num_classes": 2, "mean": [0.2], "std": [0.3],
            "classes": ["a", "b"]}
    spec = detector_spec(ModelSpec(widths=[4, 8], depth=1), meta, "teacher.model")
    torch.manual_seed(0)
    model = build_detector(spec).eval()
    with torch.no_grad():
        model.head.classification_head.cls_logits.bias.fill_(2.0)
    return model, spec


def scene_meta(image_size: int, channels: int = 1, classes: int = 10) -> dict[str, Any]:
    """A prepared detection set's meta.json, as far as a detector's spec reads it."""
    return {"shape": [channels, image_size, image_size], "num_classes": classes,
            "mean": [0.1] * channels, "std": [0.25] * channels,
            "classes": [str(c) for c in range(classes)]}


def tiny_fcos(widths: list[int], image_size: int, depth: int = 1, seed: int = 0,
              **model: Any) -> torch.nn.Module:
    """An FCOS detector around the cnn stages ``widths`` (or ``model``'s arch), seeded."""
    spec = detector_spec(ModelSpec(widths=widths, depth=depth, **model), scene_meta(image_size),
                         "teacher.model")
    torch.manual_seed(seed)
    return build_detector(spec)
