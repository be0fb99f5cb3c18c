"""Small models several test files share: the spec of a student that downsamples its input
(``distill.input_size``) and a CNN trained for a few epochs (real weights, so int8 error and
agreement mean something); detectors: tests/tiny_detectors.py."""

from __future__ import annotations

import torch

from shrinkflow.data.prepared import Prepared
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
