"""Helpers for end-to-end tests: a copy of the project in a temporary git repo, tiny params."""

from __future__ import annotations

import importlib.util
import itertools
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
COPIED = ["dvc.yaml", "params.yaml", "models.yaml", "stages", "src", ".dvc/config",
          ".dvc/.gitignore", ".dvcignore", ".gitignore",
          "models/ladder/.gitkeep",  # the ladder rungs' folder, a dep even with no rungs
          "models/teachers/.gitkeep",  # the ensemble members' folder, a dep even when empty
          "user_nets",  # model factories (docs/models.md), a dep of every model-building stage
          "data/builtin-digits.txt"]  # prepare.path of the digits, prepare's data dep

TEMPLATE = re.compile(r"\$\{\s*([^}\s]+)\s*\}")

# prune.ratio 0.5 is the middle value of the sweep in docs/experiments.md (0.3,0.5,0.7): that
# experiment reproduces nothing, which saves a third of the sweep and shows an unchanged recipe
# is free.
TINY = {
    "teacher": {"model": {"widths": [8, 16]}, "train": {"epochs": 2}},
    "distill": {"student": {"widths": [4, 8]}, "train": {"epochs": 1}},
    "prune": {"ratio": 0.5, "train": {"epochs": 1}, "sensitivity_ratios": [0.5], "round_to": 1},
    "quantize": {"calibration_samples": 32},
    # one thread per worker, as env() gives every stage: threads 0 (all cores) spun 2 threads
    # per worker on 2 cores, 8.5 -> 6.2 CPU-seconds per benchmark of the 9 models (2 runs each)
    "benchmark": {"batch_sizes": [1, 8], "repeats": 3, "warmup": 1, "threads": 1},
    # tiny models are far from the teacher: open the budget so select has a choice
    "budget": {"max_drop_points": 100},
}


def deep_update(base: dict, changes: dict) -> dict:
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            deep_update(base[key], value)
        else:
            base[key] = value
    return base


def env() -> dict[str, str]:
    """The test's interpreter first on PATH, so dvc's `python stages/...` uses this venv (or,
    during the suite, the stage server's `python`, which forks that interpreter: conftest).

    One OpenMP thread per stage process (unless the caller set OMP_NUM_THREADS): the suite runs
    two xdist workers, each starting stage processes, and queued experiments train two at a
    time, so 2 threads each oversubscribe 2 cores, and on tiny tensors the threads mostly spin
    waiting for each other. Measured on the queued-grid test alone: 69 -> 42 s, and 186 -> 136
    CPU-seconds for the test and its shared repro. (Tiny params: the numbers change with the
    thread count, and every test compares runs made in this same environment.)
    """
    path = os.pathsep.join(filter(None, [
        os.environ.get("SHRINKFLOW_TEST_SHIM_DIR"),  # conftest's stage server (stage_server.py)
        str(Path(sys.executable).parent), os.environ["PATH"]]))
    return {**os.environ, "PATH": path,
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
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


def finished_experiments(repo: Path) -> int:
    """How many experiments of ``repo`` have finished with results: each has a git ref under
    refs/exps/ (a failed one has none). Milliseconds of git, where `dvc queue status` costs a
    second of the CPU that the queued runs need (measured: polling it took a third of a core)."""
    refs = run(repo, "git", "for-each-ref", "--format=%(refname)", "refs/exps").stdout
    return len(re.findall(r"^refs/exps/[0-9a-f]{2}/[0-9a-f]{38}/", refs, re.MULTILINE))


def ran_stages(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


def copy_project(path: Path) -> None:
    """Copy the project's pipeline files (``COPIED``) into ``path``."""
    for rel in COPIED:
        src, dst = ROOT / rel, path / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, dst)


def make_repo(path: Path, changes: dict | None = None) -> Path:
    """Copy the project into ``path`` as a fresh git repo with tiny params, committed."""
    copy_project(path)
    set_params(path, deep_update(TINY_COPY(), changes or {}))
    run(path, "git", "init", "-q", "-b", "main")
    run(path, "git", "add", "-A")
    run(path, "git", "commit", "-q", "-m", "init")
    return path


def shipped_params(changes: dict | None = None) -> dict:
    """The project's params.yaml with ``changes`` applied: stages refuse a params file with a
    missing key, so a test writes the whole file, not only the keys it cares about."""
    return deep_update(yaml.safe_load((ROOT / "params.yaml").read_text()), changes or {})


def copy_repo(src: Path, dst: Path) -> Path:
    """Copy a reproduced repo (git history, DVC cache and workspace) to ``dst``.

    DVC keeps its hash cache keyed on path, inode and mtime outside the repo, so a copy starts
    with none and re-hashes the workspace against dvc.lock on its first command: the copy is up to
    date (test_pipeline checks it with `dvc repro`). ``.dvc/tmp`` (locks, the experiment queue)
    belongs to one checkout and is left behind.
    """
    shutil.copytree(src, dst, symlinks=True,
                    ignore=lambda d, _: ["tmp"] if Path(d) == src / ".dvc" else [])
    return dst


def TINY_COPY() -> dict:  # noqa: N802 - reads as the constant it copies
    return yaml.safe_load(yaml.safe_dump(TINY))


def set_params(path: Path, changes: dict) -> None:
    params_file = path / "params.yaml"
    params = yaml.safe_load(params_file.read_text())
    params_file.write_text(yaml.safe_dump(deep_update(params, changes), sort_keys=False))


# --- dvc.yaml, resolved as DVC names its stages -------------------------------------------------


def lookup(context: dict[str, Any], dotted: str) -> Any:
    value: Any = context
    for part in dotted.split("."):
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            raise KeyError(f"dvc.yaml: cannot resolve ${{{dotted}}}")
    return value


def interpolate(value: Any, context: dict[str, Any]) -> Any:
    """DVC's `${a.b}` templating: a whole-string template keeps the value's type."""
    if isinstance(value, str):
        whole = TEMPLATE.fullmatch(value)
        if whole:
            return lookup(context, whole.group(1))
        return TEMPLATE.sub(lambda m: str(lookup(context, m.group(1))), value)
    if isinstance(value, list):
        return [interpolate(v, context) for v in value]
    if isinstance(value, dict):
        # keys too, as DVC does: `- models/${item}.onnx: {persist: true}`
        return {(TEMPLATE.sub(lambda m: str(lookup(context, m.group(1))), k)
                 if isinstance(k, str) else k): interpolate(v, context)
                for k, v in value.items()}
    return value


def load_vars(entries: list[Any], context: dict[str, Any], root: Path) -> None:
    """`vars:` entries are inline dicts or `file.yaml[:key,key]` (DVC also reads params.yaml)."""
    for entry in entries:
        if isinstance(entry, dict):
            context.update(entry)
            continue
        name, _, keys = str(entry).partition(":")
        data = yaml.safe_load((root / name).read_text()) or {}
        context.update({k: data[k] for k in keys.split(",")} if keys else data)


def pipeline_stages(root: Path = ROOT) -> dict[str, dict[str, Any]]:
    """Every stage of dvc.yaml by its DVC name (`evaluate@teacher`), templates filled in."""
    pipeline = yaml.safe_load((root / "dvc.yaml").read_text())
    context: dict[str, Any] = {}
    if (root / "params.yaml").is_file():
        load_vars(["params.yaml"], context, root)
    load_vars(pipeline.get("vars", []), context, root)

    stages: dict[str, dict[str, Any]] = {}
    for name, stage in pipeline["stages"].items():
        local = dict(context)
        load_vars(stage.get("vars", []), local, root)
        if "foreach" in stage:
            items = interpolate(stage["foreach"], local)
            pairs = items.items() if isinstance(items, dict) else enumerate(items)
            for key, item in pairs:
                scalar = isinstance(item, str | int | float | bool)
                label = key if isinstance(items, dict) or not scalar else item
                body = interpolate(stage["do"], {**local, "key": key, "item": item})
                stages[f"{name}@{label}"] = body
        elif "matrix" in stage:
            matrix = {k: interpolate(v, local) for k, v in stage["matrix"].items()}
            body = {k: v for k, v in stage.items() if k != "matrix"}
            for combo in itertools.product(*matrix.values()):
                item = dict(zip(matrix, combo, strict=True))
                label = "-".join(str(v) for v in combo)
                stages[f"{name}@{label}"] = interpolate(body, {**local, "item": item})
        else:
            stages[name] = interpolate(stage, local)
    return stages


def load_stage(script: Path) -> ModuleType:
    """A stage script imported as a module (its ``main()`` not run), to test its helpers."""
    spec = importlib.util.spec_from_file_location(f"stage_{script.stem}", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_stage_main(script: Path) -> None:
    """Run a stage script's ``main()`` in this process (params and paths from the cwd), so a test
    sees its ShrinkflowError rather than an exit code."""
    load_stage(script).main()
