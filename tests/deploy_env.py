"""The deploy path's environment for tests: ``python -m shrinkflow.cli.predict`` in a subprocess,
optionally with every package outside the minimal deploy set (onnxruntime, numpy, Pillow)
failing to import (write ``SITECUSTOMIZE`` as ``sitecustomize.py`` into a folder on the path)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from pipeline_repo import ROOT

SRC = ROOT / "src"
# everything the training stack brings that the ONNX deploy path must not need
BLOCKED = ["torch", "torchvision", "dvc", "dvclive", "onnx", "pandas", "sklearn", "yaml",
           "pydantic", "matplotlib", "torch_pruning", "scipy"]
SITECUSTOMIZE = f"""
import sys

BLOCKED = {BLOCKED!r}


class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{{name}} is blocked by this test's sitecustomize")
        return None


sys.meta_path.insert(0, Block())
"""


def env_with(*paths: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(map(str, [*paths, SRC]))}


def run_predict(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "shrinkflow.cli.predict", *args],
                          env=env or env_with(), capture_output=True, text=True, timeout=120)
