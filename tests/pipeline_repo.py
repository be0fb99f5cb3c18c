"""Helpers for end-to-end tests: a copy of the project in a temporary git repo, tiny params."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
COPIED = ["dvc.yaml", "params.yaml", "models.yaml", "stages", "src", ".dvc/config",
          ".dvc/.gitignore", ".dvcignore", ".gitignore"]

TINY = {
    "teacher": {"model": {"widths": [8, 16]}, "train": {"epochs": 2}},
    "distill": {"student": {"widths": [4, 8]}, "train": {"epochs": 1}},
    "prune": {"train": {"epochs": 1}, "sensitivity_ratios": [0.5], "round_to": 1},
    "quantize": {"calibration_samples": 32},
    "benchmark": {"batch_sizes": [1, 8], "repeats": 3, "warmup": 1},
}


def deep_update(base: dict, changes: dict) -> dict:
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            deep_update(base[key], value)
        else:
            base[key] = value
    return base


def env() -> dict[str, str]:
    """The test's interpreter first on PATH, so dvc's `python stages/...` uses this venv."""
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
            "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
            "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}


def run(cwd: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(args, cwd=cwd, env=env(), capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"{args} failed ({result.returncode}):\n{result.stdout}\n"
                             f"{result.stderr}")
    return result


def dvc(cwd: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return run(cwd, sys.executable, "-m", "dvc", *args, check=check)


def ran_stages(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


def make_repo(path: Path, changes: dict | None = None) -> Path:
    """Copy the project into ``path`` as a fresh git repo with tiny params, committed."""
    for rel in COPIED:
        src, dst = ROOT / rel, path / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, dst)
    set_params(path, deep_update(TINY_COPY(), changes or {}))
    run(path, "git", "init", "-q", "-b", "main")
    run(path, "git", "add", "-A")
    run(path, "git", "commit", "-q", "-m", "init")
    return path


def shipped_params(changes: dict | None = None) -> dict:
    """The project's params.yaml with ``changes`` applied: stages refuse a params file with a
    missing key, so a test writes the whole file, not only the keys it cares about."""
    return deep_update(yaml.safe_load((ROOT / "params.yaml").read_text()), changes or {})


def TINY_COPY() -> dict:  # noqa: N802 - reads as the constant it copies
    return yaml.safe_load(yaml.safe_dump(TINY))


def set_params(path: Path, changes: dict) -> None:
    params_file = path / "params.yaml"
    params = yaml.safe_load(params_file.read_text())
    params_file.write_text(yaml.safe_dump(deep_update(params, changes), sort_keys=False))
