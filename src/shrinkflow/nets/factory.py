"""Your own model code: ``model.arch: factory`` with ``model.factory: "user_nets.mynet:build"``.

The trust rule: a factory is code from your own repository, and only from its ``user_nets/``
folder (at the repository root, the working directory of every stage). A model file stores the
factory's import path and keyword arguments, never code; since a file could name any import path,
the path is checked against ``user_nets.<module>:<function>`` *before* anything is imported, so a
model file can only run code you committed under ``user_nets/``. The folder is a dependency of
every stage that builds a model (dvc.yaml), so editing a factory reruns them.

The function is called as ``build(num_classes=N, in_channels=C, **model.options)`` and must
return an ``nn.Module`` taking (batch, C, H, W) images normalised by shrinkflow and returning
(batch, N) logits.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from torch import nn

FACTORY_DIR = "user_nets"
PATTERN = re.compile(rf"{FACTORY_DIR}(\.[A-Za-z_]\w*)+:[A-Za-z_]\w*")
_LOADED: dict[str, ModuleType] = {}  # factory modules by resolved file path


def check_factory_path(path: str) -> None:
    """ValueError unless ``path`` names a function of a module under ``user_nets/``."""
    if not PATTERN.fullmatch(path):
        raise ValueError(f"factory {path!r}: expected '{FACTORY_DIR}.<module>:<function>', a "
                         f"function in a .py file under {FACTORY_DIR}/ at the repository root "
                         "(the only code a model file may name)")


def factory_file(path: str, root: Path | None = None) -> Path:
    """The source file a factory path names (it need not exist yet)."""
    check_factory_path(path)
    module = path.split(":")[0]
    return (root or Path.cwd()) / Path(*module.split(".")).with_suffix(".py")


def load_factory(path: str) -> Callable[..., nn.Module]:
    """Import the factory function from ``user_nets/`` of the working directory."""
    source = factory_file(path)
    if not source.is_file():
        raise ValueError(f"factory {path!r}: {source} not found (run from the repository root)")
    root = str(Path.cwd())
    if root not in sys.path:  # so a factory module can import its siblings in user_nets/
        sys.path.insert(0, root)
    module_name, func = path.split(":")
    key = str(source.resolve())
    if key not in _LOADED:  # loaded from this very file, whatever else sys.modules holds
        spec = importlib.util.spec_from_file_location(module_name, source)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _LOADED[key] = module
    fn = getattr(_LOADED[key], func, None)
    if not callable(fn):
        raise ValueError(f"factory {path!r}: {source} has no function {func!r}")
    return fn


def build_from_factory(path: str, in_channels: int, num_classes: int,
                       options: dict[str, Any]) -> nn.Module:
    """Call the factory; a ValueError naming it when the call fails or returns no module."""
    fn = load_factory(path)
    try:
        net = fn(num_classes=num_classes, in_channels=in_channels, **options)
    except TypeError as exc:
        raise ValueError(f"factory {path!r} with options {options}: {exc}") from None
    if not isinstance(net, nn.Module):
        raise ValueError(f"factory {path!r} returned {type(net).__name__}, not an nn.Module")
    return net
