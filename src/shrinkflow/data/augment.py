"""Training-time augmentation on whole uint8 batches, on the training device.

Random crop with zero padding (and optionally a horizontal flip) is the standard recipe for
small images: a CIFAR-10 ResNet-18 loses several points of accuracy without it. It runs as one
gather per batch, not a per-sample Python loop, so it costs next to nothing on a GPU and keeps a
CPU epoch's time dominated by the model.

Randomness comes from a CPU ``torch.Generator`` owned by the training loop and separate from the
shuffling one: the same seed gives the same augmented batches on any device, and switching
augmentation on or off does not change the batch order.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

Augment = Callable[[torch.Tensor], torch.Tensor]
MODES = ("none", "crop", "crop_flip")


def random_crop_flip(
    x: torch.Tensor, padding: int, flip: bool, generator: torch.Generator
) -> torch.Tensor:
    """Pad ``x`` (N, C, H, W) with ``padding`` zeros, crop each image back to H x W at a random
    offset, and mirror it left-right with probability 1/2 when ``flip``.

    The crop and the flip are one gather: row index ``off_y + i``, column index ``off_x + j``
    (reversed for flipped images) into the padded batch.
    """
    n, c, h, w = x.shape
    offsets = torch.randint(0, 2 * padding + 1, (2, n), generator=generator)
    rows = offsets[0][:, None] + torch.arange(h)
    cols = offsets[1][:, None] + torch.arange(w)
    if flip:
        mirrored = torch.rand(n, generator=generator) < 0.5
        cols = torch.where(mirrored[:, None], cols.flip(1), cols)
    device = x.device
    padded = F.pad(x, (padding, padding, padding, padding))
    return padded[
        torch.arange(n, device=device)[:, None, None, None],
        torch.arange(c, device=device)[None, :, None, None],
        rows.to(device)[:, None, :, None],
        cols.to(device)[:, None, None, :],
    ]


def make_augment(mode: str, padding: int, seed: int) -> Augment | None:
    """The batch transform ``train.augment`` names, seeded; ``None`` for ``none``."""
    if mode == "none":
        return None
    if mode not in MODES:
        raise ValueError(f"unknown augmentation {mode!r}; expected one of {', '.join(MODES)}")
    # Offset from the shuffle seed so the two generators never share a stream.
    generator = torch.Generator().manual_seed(seed + 7919)
    flip = mode == "crop_flip"
    return lambda x: random_crop_flip(x, padding, flip, generator)
