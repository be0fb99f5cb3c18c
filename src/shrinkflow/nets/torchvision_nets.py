"""torchvision's classification architectures by name (``resnet50``, ``mobilenet_v3_small``,
``efficientnet_b0``, ...), built with their constructor options and randomly initialised.

The stem: at photo sizes a network keeps torchvision's own stem. Below ``SMALL_STEM_BELOW``
pixels the first convolution becomes a 3x3 stride-1 one and a top-level max-pool is dropped (the
CIFAR-style adaptation), so a 32 px image is not shrunk to 8 px before the first block; a stride-2
7x7 stem plus max-pool leaves a resnet18 a 1x1 map at 32 px. ``model.stem`` may force either.
For ``resnet18`` and ``mobilenet_v2`` the small stem builds exactly the modules (and consumes the
same random numbers) as shrinkflow's original zoo did.
"""

from __future__ import annotations

import difflib
from typing import Any

from torch import nn

SMALL_STEM_BELOW = 96  # px: the shorter input side below which the small-image stem is used
# Networks whose training-mode forward returns auxiliary outputs unless told not to.
NO_AUX = ("googlenet", "inception_v3")


def known_archs() -> list[str]:
    """Every classification architecture torchvision registers (no detection, no video)."""
    import torchvision.models as tvm  # ~2.5 s: only when a torchvision name is used

    return tvm.list_models(module=tvm)


def check_arch(name: str, extra: tuple[str, ...] = ()) -> None:
    """ValueError naming ``name`` and its close matches when torchvision has no such model.
    A name in ``extra`` passes without importing torchvision: that import costs ~1.7 s per stage
    here (torchvision.ops pulls in torch._dynamo), paid by every stage that opens a cnn file."""
    if name in extra:
        return
    names = list(extra) + known_archs()
    if name not in names:
        close = difflib.get_close_matches(name, names, n=4, cutoff=0.5)
        hint = f"; close matches: {', '.join(close)}" if close else ""
        raise ValueError(f"unknown architecture {name!r}{hint} (cnn, factory, or any of "
                         f"torchvision's {len(names) - len(extra)} classification models)")


def resolve_stem(stem: str, side: int | None) -> str:
    """``auto`` -> ``small`` below ``SMALL_STEM_BELOW`` px (or when the size is unknown: the
    zoo's original behaviour), else ``standard``."""
    if stem != "auto":
        return stem
    return "small" if side is None or side < SMALL_STEM_BELOW else "standard"


def _first_conv(net: nn.Module) -> tuple[nn.Module, str, nn.Conv2d]:
    name, conv = next((n, m) for n, m in net.named_modules() if isinstance(m, nn.Conv2d))
    parent_name, _, attr = name.rpartition(".")
    return net.get_submodule(parent_name), attr, conv


def build_torchvision(name: str, in_channels: int, num_classes: int, options: dict[str, Any],
                      stem: str) -> nn.Module:
    """torchvision's ``name`` with ``options``, ``num_classes`` outputs, ``in_channels`` inputs
    and the ``small`` or ``standard`` stem (module docstring)."""
    from torchvision.models import get_model

    kwargs = dict(options)
    if name in NO_AUX:
        kwargs.setdefault("aux_logits", False)
        kwargs.setdefault("init_weights", True)
    net = get_model(name, weights=None, num_classes=num_classes, **kwargs)
    parent, attr, conv = _first_conv(net)
    if stem == "small":
        setattr(parent, attr, nn.Conv2d(in_channels, conv.out_channels, 3, stride=1, padding=1,
                                        bias=conv.bias is not None))
        for pool in ("maxpool", "maxpool1"):
            if isinstance(getattr(net, pool, None), nn.MaxPool2d):
                setattr(net, pool, nn.Identity())
    elif in_channels != conv.in_channels:
        setattr(parent, attr, nn.Conv2d(in_channels, conv.out_channels, conv.kernel_size,
                                        conv.stride, conv.padding, conv.dilation, conv.groups,
                                        bias=conv.bias is not None))
    return net
