"""Which network families structured pruning takes, and the check that a pruned model can be
rebuilt from its file.

Measured on tiny random-init instances (32 px, ratio 0.5, torch-pruning 1.6.1, tests/
test_families.py): resnet / resnext / wide_resnet (residual), mobilenet_v2 / mnasnet
(depthwise), mobilenet_v3 / efficientnet (depthwise + squeeze-excitation), regnet (grouped conv
+ SE), densenet, vgg and the cnn prune, and rebuild from the saved tensors with identical
outputs. Refused before any work, with the reason: the families below.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from shrinkflow.core.errors import ShrinkflowError
from shrinkflow.nets.zoo import build_model, resize_to_state_dict

REFUSED = {
    "shufflenet": "its channel shuffle defeats torch-pruning's dependency graph "
                  "(ZeroDivisionError)",
    "convnext": "its LayerNorm2d and layer-scale parameters cannot be rebuilt from a pruned file",
    "squeezenet": "its classifier is a convolution, not the nn.Linear head pruning must keep",
    "vit": "attention blocks are not channel-pruned here",
    "swin": "attention blocks are not channel-pruned here",
    "maxvit": "attention blocks are not channel-pruned here",
    "googlenet": "its inception branches are not verified to rebuild",
    "inception": "its inception branches are not verified to rebuild",
}


def check_prunable(spec: dict[str, Any], path: str) -> None:
    """One line naming the architecture and why, for a family structured pruning refuses."""
    arch = spec["arch"]
    for family, why in REFUSED.items():
        if arch.startswith(family):
            raise ShrinkflowError(f"{path}: structured pruning does not take {arch}: {why}; set "
                                  "prune.mode: unstructured, or pick a student family that "
                                  "prunes (docs/models.md)")


def check_rebuilds(model: nn.Module, spec: dict[str, Any], shape: tuple[int, ...]) -> None:
    """The pruned model must come back from its tensors alone (what every later stage does):
    rebuilt from the spec, resized, loaded, and giving the same outputs. A factory network whose
    layers cannot be resized that way is named here, before the file is written."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    was_training = model.training
    model.cpu().eval()
    x = torch.rand(2, *shape, generator=torch.Generator().manual_seed(0))
    try:
        rebuilt = resize_to_state_dict(build_model(spec), state)
        rebuilt.load_state_dict(state)
        with torch.no_grad():
            same = torch.allclose(rebuilt.eval()(x), model(x), atol=1e-4, rtol=1e-4)
    except (RuntimeError, KeyError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0][:200]
        raise ShrinkflowError(f"prune: the pruned {spec['arch']} cannot be rebuilt from its "
                              f"tensors ({first}); its layers are not plain Conv2d / BatchNorm2d "
                              "/ Linear: use prune.mode: unstructured") from None
    model.train(was_training)
    if not same:
        raise ShrinkflowError(f"prune: the pruned {spec['arch']} rebuilt from its tensors gives "
                              "other outputs; use prune.mode: unstructured")
