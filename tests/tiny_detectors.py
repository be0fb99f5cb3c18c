"""Tiny FCOS detectors for the unit tests, built as the pipeline builds them (nets.detectors:
``detector_spec`` from a params section and the data's meta, then ``build_detector``)."""

from __future__ import annotations

from typing import Any

import torch

from shrinkflow.nets.detectors import build_detector, detector_spec
from shrinkflow.params.common import ModelSpec


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
