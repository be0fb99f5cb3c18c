"""Small detectors several test files share: built-in scenes to train on, a recipe that learns
them in seconds, and an untrained detector that still gives boxes (for file-format tests)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from shrinkflow.data.prepare_detection import read_detection, write_detection
from shrinkflow.nets.detectors import build_detector, detector_spec
from shrinkflow.params.common import ModelSpec, TrainConfig
from shrinkflow.params.prepare import PrepareParams

TRAINED = ModelSpec(widths=[8, 16, 32], depth=1)
# measured: 4 epochs of 16 batches reach test mAP@.5 0.22 from 0.00 in about 3 s
RECIPE = TrainConfig(epochs=4, batch_size=16, lr=0.02, schedule="constant")


def write_scenes(folder: Path, train: int = 256) -> str:
    """``train`` training scenes of one digit each (32 validation and test), 32 px, prepared
    into ``folder``."""
    p = PrepareParams(task="detection", source="scenes", image_size=32, scenes={
        "train": train, "val": 32, "test": 32, "max_digits": 1, "digit_scale": 2})
    write_detection(folder, read_detection(p), "scenes")
    return str(folder)


def untrained_detector(widths: list[int], size: int = 32, confident: bool = True,
                       detector: str = "fcos") -> tuple[nn.Module, dict]:
    """A seeded 1-channel FCOS of two classes, eval mode, and its spec; ``confident``: every
    class logit's bias raised so that boxes clear the score threshold without training."""
    meta = {"shape": [1, size, size], "num_classes": 2, "mean": [0.2], "std": [0.3],
            "classes": ["a", "b"]}
    spec = detector_spec(ModelSpec(widths=widths, depth=1, detector=detector), meta,
                         "teacher.model")
    torch.manual_seed(0)
    model = build_detector(spec).eval()
    if confident:
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
