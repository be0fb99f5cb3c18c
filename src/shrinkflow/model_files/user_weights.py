"""Teachers users already have: fine-tune from their weights, or import a finished model.

A weights file is one of
  * a plain state_dict for the chosen architecture (any torchvision classifier or factory), named
    as its module names it (``conv1.weight`` ... ``fc.weight`` for resnets,
    ``features.0.0.weight`` ... ``classifier.3.weight`` for mobilenet_v3), e.g. ImageNet weights
    saved once with ``torch.save(resnet50(weights="IMAGENET1K_V2").state_dict(), path)``;
  * a training checkpoint wrapping such a state_dict under ``state_dict`` or ``model``
    (torchvision's reference scripts, Lightning), optionally with a DDP ``module.`` prefix;
  * a shrinkflow ``.pt`` model file (read through ``shrinkflow.model_files.pt``).

Every file is read with ``torch.load(weights_only=True)`` (``model_files.pt.torch_load``): nothing
in it can run code, and a file holding anything but tensors and plain data gets a one-line error
naming it. A shrinkflow ``.pt`` is checked field by field (``check_payload``) and built against
its own tensors (``model_from_checkpoint``), so its spec cannot make the import allocate more
than the file holds.

Fine-tuning (``load_into``) copies every tensor whose name and shape match into the freshly built
model. The classifier head is left freshly initialised when the class count differs, and so is
the stem when its shape differs (the small-image 3x3 stride-1 stem, used below 96 px, cannot
take ImageNet's 7x7 kernels; at photo sizes the standard stem loads them). Importing
(``import_model``) is strict: the file must be a complete model for the data.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from shrinkflow.core.errors import ShrinkflowError, echo
from shrinkflow.model_files.pt import (
    MODEL_FORMAT,
    check_payload,
    model_from_checkpoint,
    torch_load,
)
from shrinkflow.nets.zoo import Classifier, build_model, final_linear, make_spec

KEY = "teacher.init"
# Checkpoint wrappers: the tensors sit under one of these keys (torchvision references: "model").
WRAPPER_KEYS = ("state_dict", "model")
# Name prefixes added by DistributedDataParallel ("module.") and Lightning modules ("model.").
WRAPPER_PREFIXES = ("module.", "model.")
# Columns every ``fit`` history has: an imported teacher writes them as a header-only CSV, so
# the plots file dvc.yaml declares exists and the report reads it without special cases.
HISTORY_COLUMNS = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr"]


@dataclass(frozen=True)
class UserWeights:
    """Tensors read from a user's file, named as the network body (torchvision) names them."""

    path: str
    state_dict: dict[str, torch.Tensor]
    checkpoint: dict[str, Any] | None = None  # the whole payload when it is a shrinkflow model


def _fail(path: str | Path, message: str, key: str = KEY) -> ShrinkflowError:
    return ShrinkflowError(f"{key} = '{path}': {message}")


def _strip_prefix(state: dict[str, Any]) -> dict[str, Any]:
    for prefix in WRAPPER_PREFIXES:
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def _classifier_body(state: Mapping[str, Any]) -> dict[str, Any]:
    """Body tensors of a shrinkflow ``Classifier`` state_dict (its mean/std come from the data)."""
    return {k[len("body."):]: v for k, v in state.items() if k.startswith("body.")}


def read_weights(path: str | Path, key: str = KEY) -> UserWeights:
    """Read a user's weights file safely and reduce it to a mapping of tensors."""
    path = str(path)
    if not Path(path).is_file():
        raise _fail(path, "file not found; put the weights there and `dvc add` it "
                          "(docs/teachers.md)", key)
    name = f"{key} = '{path}'"
    obj = torch_load(path, name)  # the project's one torch.load (weights_only=True)
    if isinstance(obj, Mapping) and obj.get("format") == MODEL_FORMAT:
        checked = check_payload(dict(obj), name)  # every field, before anything is built
        return UserWeights(path, _classifier_body(checked["state_dict"]), checked)
    if isinstance(obj, Mapping):
        for wrapper in WRAPPER_KEYS:
            if isinstance(obj.get(wrapper), Mapping):
                obj = obj[wrapper]
                break
    if not isinstance(obj, Mapping) or not obj:
        what = "an empty mapping" if isinstance(obj, Mapping) else type(obj).__name__
        raise _fail(path, f"expected a state_dict (tensor names -> tensors) or a checkpoint "
                          f"holding one under 'state_dict' or 'model', got {what}", key)
    for name, value in obj.items():
        if not isinstance(name, str) or not isinstance(value, torch.Tensor):
            raise _fail(path, f"expected a state_dict of tensors, but entry {name!r} holds "
                              f"{type(value).__name__}", key)
    state = _strip_prefix(dict(obj))
    if all(k.startswith("body.") or k in ("mean", "std") for k in state):
        state = _classifier_body(state)  # model.state_dict() of a shrinkflow model
    return UserWeights(path, state)


def arch_label(spec: Mapping[str, Any]) -> str:
    """Short human name of a spec's architecture, for messages."""
    options = f" {dict(spec['options'])}" if spec.get("options") else ""
    if spec["arch"] == "cnn":
        return f"cnn {list(spec['widths'])} depth {spec['depth']}"
    if spec["arch"] == "factory":
        return f"factory {spec['factory']}{options}"
    if spec["arch"] == "mobilenet_v2" and spec["width_mult"] != 1.0:
        return f"mobilenet_v2 width_mult {spec['width_mult']}"
    return f"{spec['arch']}{options}"


def _module_name(body: nn.Module, module: nn.Module) -> str:
    return next(name for name, m in body.named_modules() if m is module)


def _stem_and_head(body: nn.Module) -> tuple[str, str]:
    """Names of the first convolution (the stem we adapt to small images) and the final linear."""
    stem = next(m for m in body.modules() if isinstance(m, nn.Conv2d))
    return _module_name(body, stem), _module_name(body, final_linear(body))


def _under(name: str, module: str) -> bool:
    return name.startswith(module + ".")


def _shape(t: torch.Tensor) -> str:
    """Conv kernels as HxWxC_in (the part the stem adapts), anything else as its shape."""
    if t.dim() == 4:
        return f"{t.shape[2]}x{t.shape[3]}x{t.shape[1]}"
    return "x".join(str(s) for s in t.shape)


def _few(names: list[str], n: int = 3) -> str:
    return ", ".join(names[:n]) + (f", ... ({len(names)} in all)" if len(names) > n else "")


def load_into(model: Classifier, spec: Mapping[str, Any], weights: UserWeights,
              log: Callable[[str], None] = print, name: str = "teacher") -> None:
    """Initialise ``model`` (built from ``spec``) from a user's weights before fine-tuning.

    Every tensor whose name and shape match is copied. The head and the stem stay freshly
    initialised when their shapes differ (another class count; ImageNet's 7x7 or RGB stem).
    Fewer than half of the other tensors matching (in the model, or in the file) means the file
    is for another architecture: an error, rather than fine-tuning a mostly random network.
    """
    body, source = model.body, weights.state_dict
    target = body.state_dict()
    stem, head = _stem_and_head(body)
    loaded: dict[str, torch.Tensor] = {}
    core_total = core_loaded = 0
    for key, tensor in target.items():
        src = source.get(key)
        matches = src is not None and src.shape == tensor.shape
        if matches:
            loaded[key] = src
        if not (_under(key, stem) or _under(key, head)):
            core_total += 1
            core_loaded += matches
    unused = [k for k in source if k not in loaded]
    source_core = [k for k in source if not (_under(k, stem) or _under(k, head))]
    source_used = sum(k in loaded for k in source_core)
    if core_loaded * 2 < core_total or source_used * 2 < len(source_core):
        missing = [k for k in target if k not in source]
        unexpected = [k for k in source if k not in target]
        names = "; ".join(f"{label}: {_few(keys)}" for label, keys in
                          (("missing", missing), ("unexpected", unexpected)) if keys)
        raise _fail(weights.path, f"looks like weights for another architecture: {core_loaded} "
                                  f"of {core_total} tensors match {arch_label(spec)} (and "
                                  f"{source_used} of the file's {len(source_core)} are used"
                                  + (f"; {names}" if names else "") + "); check teacher.model")
    body.load_state_dict(loaded, strict=False)

    parts = [f"{len(loaded)}/{len(target)} tensors loaded"]
    head_w, src_head_w = target[f"{head}.weight"], source.get(f"{head}.weight")
    if f"{head}.weight" not in loaded:
        if src_head_w is None:
            parts.append(f"head {head} not in file (freshly initialised)")
        else:
            parts.append(f"replaced head {head} ({src_head_w.shape[0]} -> {head_w.shape[0]} "
                         f"classes)")
    stem_w, src_stem_w = target[f"{stem}.weight"], source.get(f"{stem}.weight")
    if f"{stem}.weight" not in loaded:
        if src_stem_w is None:
            parts.append(f"stem {stem} not in file (freshly initialised)")
        else:
            parts.append(f"stem {stem} re-initialised ({_shape(src_stem_w)} -> {_shape(stem_w)})")
    missing = [k for k in target if k not in loaded
               and not (_under(k, stem) or _under(k, head))]
    if missing:
        parts.append(f"not in file or other shape, left initialised: {_few(missing)}")
    unused_core = [k for k in unused if not (_under(k, stem) or _under(k, head))]
    if unused_core:
        parts.append(f"unused from file: {_few(unused_core)}")
    log(f"[{name}] init from {weights.path}: " + "; ".join(parts))


def check_spec_fits_data(spec: Mapping[str, Any], meta: Mapping[str, Any], path: str | Path,
                         key: str = KEY) -> None:
    """An imported model must take the prepared images and predict the prepared classes."""
    channels, classes = meta["shape"][0], meta["num_classes"]
    if spec["num_classes"] != classes:
        raise _fail(path, f"the model predicts {spec['num_classes']} classes but the prepared "
                          f"data has {classes}; to re-head it, fine-tune instead "
                          f"(teacher.mode: train with this teacher.init)", key)
    if spec["in_channels"] != channels:
        raise _fail(path, f"the model takes {spec['in_channels']} input channel(s) but the "
                          f"prepared images have {channels}", key)
    if not len(spec["mean"]) == len(spec["std"]) == channels:
        raise _fail(path, f"normalisation mean/std have {len(spec['mean'])}/{len(spec['std'])} "
                          f"values for {channels} channel(s)", key)


def check_class_names(model_meta: Mapping[str, Any], data_meta: Mapping[str, Any],
                      path: str | Path, key: str = KEY) -> None:
    """A model that names its classes (the card select writes into a final model) must name the
    prepared data's classes in the same order: label 3 must mean the same class to both."""
    card = model_meta.get("card")
    names = card.get("classes") if isinstance(card, Mapping) else None
    if names is None:
        return
    if not isinstance(names, list):
        raise _fail(path, f"meta.card.classes: expected a list of class names, got "
                          f"{type(names).__name__}", key)
    data = list(data_meta["classes"])
    for i, (mine, theirs) in enumerate(zip(names, data, strict=False)):
        if mine != theirs:
            raise _fail(path, f"class {i} is {echo(mine)} in the model but {echo(theirs)} in the "
                              f"prepared data (data/prepared/meta.json); labels would mean other "
                              f"classes", key)
    if len(names) != len(data):
        raise _fail(path, f"the model names {len(names)} classes but the prepared data has "
                          f"{len(data)}", key)


def _state_dict_fits_data(weights: UserWeights, body: nn.Module, spec: Mapping[str, Any],
                          key: str = KEY) -> None:
    """Before a strict load: the class count, input channels and stem a state_dict implies."""
    stem, head = _stem_and_head(body)
    head_w = weights.state_dict.get(f"{head}.weight")
    stem_w = weights.state_dict.get(f"{stem}.weight")
    if head_w is not None and head_w.dim() == 2 and head_w.shape[0] != spec["num_classes"]:
        raise _fail(weights.path, f"the weights' head {head} predicts {head_w.shape[0]} classes "
                                  f"but the prepared data has {spec['num_classes']}; to re-head "
                                  f"it, fine-tune instead (teacher.mode: train)", key)
    if stem_w is not None and stem_w.dim() == 4:
        want = body.get_submodule(stem).weight
        if stem_w.shape[1] != spec["in_channels"]:
            raise _fail(weights.path, f"the weights' stem {stem} takes {stem_w.shape[1]} input "
                                      f"channel(s) but the prepared images have "
                                      f"{spec['in_channels']}", key)
        if stem_w.shape[2:] != want.shape[2:]:
            raise _fail(weights.path, f"the weights' stem {stem} is {_shape(stem_w)}, shrinkflow's "
                                      f"small-image stem is {_shape(want)}; import takes a model "
                                      f"built by shrinkflow.nets.zoo, fine-tune from these weights "
                                      f"instead (teacher.mode: train)", key)


def import_model(weights: UserWeights, model_params: Any, meta: Mapping[str, Any],
                 key: str = KEY, log: Callable[[str], None] = print,
                 name: str = "teacher") -> tuple[Classifier, dict[str, Any]]:
    """The finished model a user provides, checked against the prepared data; (model, spec).

    A shrinkflow ``.pt`` keeps its own spec (pruned shapes included); a plain state_dict is loaded
    strictly into ``model_params``' architecture, normalising with the prepared data's mean/std.
    """
    if weights.checkpoint is not None:
        spec = dict(weights.checkpoint["spec"])
        check_spec_fits_data(spec, meta, weights.path, key)
        check_class_names(weights.checkpoint["meta"], meta, weights.path, key)
        model = model_from_checkpoint(weights.checkpoint, weights.path)
        how = f"shrinkflow model, {arch_label(spec)} as saved (teacher.model not used)"
    else:
        spec = make_spec(model_params, meta["shape"][0], meta["num_classes"], meta["mean"],
                         meta["std"])
        model = build_model(spec)
        _state_dict_fits_data(weights, model.body, spec, key)
        target = model.body.state_dict()
        missing = [k for k in target if k not in weights.state_dict]
        unexpected = [k for k in weights.state_dict if k not in target]
        wrong = [k for k in target if k in weights.state_dict
                 and weights.state_dict[k].shape != target[k].shape]
        if missing or unexpected or wrong:
            found = [f"{label}: {_few(names)}" for label, names in
                     (("missing", missing), ("unexpected", unexpected), ("other shape", wrong))
                     if names]
            raise _fail(weights.path, f"not a complete {arch_label(spec)} state_dict ("
                                      + "; ".join(found) + "); check teacher.model", key)
        model.body.load_state_dict(weights.state_dict)
        how = (f"state_dict for {arch_label(spec)}, all {len(target)} tensors; inputs "
               f"normalised with the prepared data's mean/std")
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, *meta["shape"]))
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0][:200]
        raise _fail(weights.path, f"the model does not run on the prepared images of shape "
                                  f"{list(meta['shape'])} ({first})", key) from exc
    log(f"[{name}] imported {weights.path}: {how}")
    return model, spec
