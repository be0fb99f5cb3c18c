"""The model zoo: a plain CNN, any torchvision classifier by name (``nets.torchvision_nets``: the
small-image stem below 96 px) and your own model code (``nets.factory``).

Every model is wrapped in ``Classifier``, which normalises its input with the training set's
mean/std. A shipped model (``.pt`` or ``.onnx``) therefore takes images scaled to [0, 1] and needs
no side file to be used correctly.

A model is described by a *spec*: a plain dict (JSON-able, stored inside each ``.pt`` artifact)
that ``build_model`` turns back into the same architecture.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from shrinkflow.nets.factory import build_from_factory
from shrinkflow.nets.torchvision_nets import build_torchvision, check_arch, resolve_stem

# Names that are not torchvision's: the plain CNN and "your own code" (model.factory).
OWN_ARCHS = ("cnn", "factory")


def resize_matrix(size_in: int, size_out: int) -> torch.Tensor:
    """(size_out, size_in) weights of an antialiased bilinear resize along one axis.

    Taken from ``F.interpolate(mode="bilinear", antialias=True)`` applied to the identity
    matrix along its height only (the width kept, so that axis is left untouched), so
    ``Resize`` reproduces it to float precision (the filter is separable: rows, then columns).
    """
    eye = torch.eye(size_in).view(1, 1, size_in, size_in)
    out = F.interpolate(eye, size=(size_out, size_in), mode="bilinear", antialias=True,
                        align_corners=False)
    return out[0, 0].contiguous()


class Resize(nn.Module):
    """Antialiased bilinear downsampling as two matrix products: ``rows @ x @ cols^T``.

    Why not ``F.interpolate(..., antialias=True)`` itself: ONNX export of
    ``aten::_upsample_bilinear2d_aa`` fails in torch 2.14's exporter at opset 17 and 18
    (UnsupportedOperatorError, measured), and a plain bilinear resize without antialiasing
    aliases when shrinking. The matrices are computed from the spec at build time
    (non-persistent buffers: the state_dict is unchanged), give the same result as the
    antialiased interpolate to float precision, export as two MatMul nodes that ONNX Runtime
    runs everywhere, and cost h*H*W + h*W*w multiply-adds per channel (~25 k for 32 -> 16: under
    1 % of the student's MACs; torch-pruning's counter does not count them).
    """

    def __init__(self, image_hw: list[int], size: int) -> None:
        super().__init__()
        self.size = int(size)
        self.register_buffer("rows", resize_matrix(int(image_hw[0]), self.size), persistent=False)
        self.register_buffer("cols", resize_matrix(int(image_hw[1]), self.size).t().contiguous(),
                             persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.matmul(torch.matmul(self.rows, x), self.cols)

    def extra_repr(self) -> str:
        return f"size={self.size}"


class Classifier(nn.Module):
    """Normalise [0, 1] images with fixed per-channel mean/std, then run the network body.

    With ``resize`` (the spec's ``input_size``), images are first downsampled inside the model,
    so the model, its ONNX export and every later stage still take the data's full-size images.
    """

    def __init__(self, body: nn.Module, mean: list[float], std: list[float],
                 resize: nn.Module | None = None) -> None:
        super().__init__()
        self.resize = resize if resize is not None else nn.Identity()
        self.body = body
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body((self.resize(x) - self.mean) / self.std)


def _cnn(in_channels: int, num_classes: int, widths: list[int], depth: int) -> nn.Module:
    """VGG-style stages of conv-BN-ReLU, 2x max-pool between stages, global pool, linear head.

    ceil_mode pooling lets any number of stages run on 8x8 inputs (1x1 stays 1x1).
    """
    layers: list[nn.Module] = []
    channels = in_channels
    for stage, width in enumerate(widths):
        for _ in range(depth):
            layers += [
                nn.Conv2d(channels, width, 3, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
            ]
            channels = width
        if stage < len(widths) - 1:
            layers.append(nn.MaxPool2d(2, ceil_mode=True))
    return nn.Sequential(
        OrderedDict(
            features=nn.Sequential(*layers),
            pool=nn.AdaptiveAvgPool2d(1),
            flatten=nn.Flatten(),
            classifier=nn.Linear(channels, num_classes),
        )
    )


def make_spec(
    model_params: Any, in_channels: int, num_classes: int, mean: list[float], std: list[float],
    input_size: int = 0, image_hw: list[int] | None = None,
) -> dict[str, Any]:
    """Combine a ``ModelSpec`` params section with the dataset's shape into a storable spec.

    ``input_size`` > 0 (with the data's ``image_hw``) puts a ``Resize`` to input_size x
    input_size in front of the network; 0, or the data's own size, adds nothing. A torchvision
    network records its stem (``small`` below 96 px of network input, see
    ``nets.torchvision_nets``); a factory its import path; both their ``options`` when set. The
    cnn's spec has none of these keys, so its files are byte for byte what they were.
    """
    if input_size and image_hw is None:
        raise ValueError("input_size needs image_hw (the data's height and width)")
    resize = {} if not input_size or list(image_hw) == [input_size, input_size] else {
        "input_size": int(input_size), "image_hw": [int(v) for v in image_hw]}
    return {
        "arch": model_params.arch,
        "widths": list(model_params.widths),
        "depth": int(model_params.depth),
        "width_mult": float(model_params.width_mult),
        "in_channels": int(in_channels),
        "num_classes": int(num_classes),
        "mean": [float(m) for m in mean],
        "std": [float(s) for s in std],
        **resize,
        **_arch_keys(model_params, input_size or (min(image_hw) if image_hw else None)),
    }


def _arch_keys(model_params: Any, side: int | None) -> dict[str, Any]:
    """The spec keys only torchvision networks and factories have."""
    arch = model_params.arch
    options = dict(getattr(model_params, "options", {}) or {})
    if arch == "cnn":
        return {}
    keys: dict[str, Any] = {"options": options} if options else {}
    if arch == "factory":
        return {"factory": model_params.factory, **keys}
    return {"stem": resolve_stem(getattr(model_params, "stem", "auto"), side), **keys}


def build_model(spec: dict[str, Any]) -> Classifier:
    """Build a freshly initialised model from a spec (the seed is the caller's business)."""
    arch = spec["arch"]
    in_ch, n_cls = spec["in_channels"], spec["num_classes"]
    options = dict(spec.get("options", {}))
    if arch == "cnn":
        body = _cnn(in_ch, n_cls, spec["widths"], spec["depth"])
    elif arch == "factory":
        body = build_from_factory(spec["factory"], in_ch, n_cls, options)
    else:
        check_arch(arch, OWN_ARCHS)
        if arch == "mobilenet_v2":  # the zoo's original field for its width
            options.setdefault("width_mult", spec["width_mult"])
        # files written before the stem was recorded were all small-image models
        body = build_torchvision(arch, in_ch, n_cls, options, spec.get("stem", "small"))
    resize = Resize(spec["image_hw"], spec["input_size"]) if spec.get("input_size") else None
    return Classifier(body, spec["mean"], spec["std"], resize)


def final_linear(model: nn.Module) -> nn.Linear:
    """The classifier head (last nn.Linear): the layer pruning must leave intact."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError("model has no nn.Linear classifier")
    return linears[-1]


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Multiply-accumulates for one image, counted by torch-pruning's forward hooks.

    It agrees with torch.utils.flop_counter within 0.5% on these models (it also counts
    batch-norm and pooling), without FlopCounterMode's ~1.2 s import of torch._dynamo in every
    stage process. int8 modules are not counted: report MACs from the fp32 graph.
    """
    import torch_pruning as tp

    _count_subclasses(model)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    with torch.no_grad():
        macs, _ = tp.utils.count_ops_and_params(model, torch.zeros(1, *input_shape, device=device))
    model.train(was_training)
    return int(macs)


def _count_subclasses(model: nn.Module) -> None:
    """torch-pruning counts a module only when its exact type is known: a subclass of nn.Conv2d
    (e.g. efficientnet-lite's Conv2dStaticSamePadding, a factory model) would count as zero
    (measured: 6.4 M instead of ~130 M MACs for EfficientNet-Lite0 at 128 px). Count each such
    subclass as its nearest known base; the mapping is reset by every count."""
    from torch_pruning.utils import op_counter

    for module_type in {type(m) for m in model.modules()}:
        if module_type in op_counter.MODULES_MAPPING:
            continue
        base = next((b for b in module_type.__mro__[1:] if b in op_counter.MODULES_MAPPING), None)
        if base is not None:
            op_counter.CUSTOM_MODULES_MAPPING[module_type] = op_counter.MODULES_MAPPING[base]


def resize_to_state_dict(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> nn.Module:
    """Shrink conv / batch-norm / linear layers in place to the shapes stored in a state_dict.

    This is how a structurally pruned model is rebuilt from a plain tensor file: build the base
    architecture, resize each layer to its saved tensors, then ``load_state_dict``. Depthwise
    convolutions (groups == in_channels) keep being depthwise at their new width.
    """
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        weight = state_dict.get(prefix + "weight")
        if weight is None:
            continue
        if isinstance(module, nn.Conv2d):
            depthwise = module.groups > 1 and module.groups == module.in_channels
            module.out_channels = weight.shape[0]
            module.groups = weight.shape[0] if depthwise else module.groups
            module.in_channels = weight.shape[1] * module.groups
        elif isinstance(module, nn.BatchNorm2d):
            module.num_features = weight.shape[0]
            for buf in ("running_mean", "running_var"):
                setattr(module, buf, torch.empty_like(state_dict[prefix + buf]))
        elif isinstance(module, nn.Linear):
            module.out_features, module.in_features = weight.shape
        else:
            continue
        module.weight = nn.Parameter(torch.empty_like(weight))
        bias = state_dict.get(prefix + "bias")
        if bias is not None and getattr(module, "bias", None) is not None:
            module.bias = nn.Parameter(torch.empty_like(bias))
    return model
