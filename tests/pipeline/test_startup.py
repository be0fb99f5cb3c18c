"""Stages that never run a model in their own process start without torch or ONNX Runtime.

Importing torch costs about 2 s of CPU per stage run on 2 cores (measured: the benchmark's
parent imported its modules in 2.0-2.1 s with torch, 0.3 s without), paid again by every
experiment that reruns the stage. select, report and compare only read metrics; the benchmark's
parent only schedules the workers that time the models (``shrinkflow.measure.benchmark_worker``,
imported
by the workers alone). A new import that pulls torch back into one of them fails here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# One fresh interpreter per group imports its entries in turn and, after each, lists the watched
# modules present (an entry loaded after one that imported them cannot be told apart: None).
# One process per entry cost 13 s of the suite (each imported pandas, matplotlib, DVCLive anew).
IMPORT_AND_LIST = """
import importlib, importlib.util, json, sys
watched, found = sys.argv[1].split(","), {}
for entry in sys.argv[2:]:
    if any(m in sys.modules for m in watched):
        found[entry] = None
        continue
    if entry.endswith(".py"):  # a script: imports only, main() not run
        spec = importlib.util.spec_from_file_location("stage", entry)
        spec.loader.exec_module(importlib.util.module_from_spec(spec))
    else:
        importlib.import_module(entry)
    found[entry] = [m for m in watched if m in sys.modules]
print(json.dumps(found))
"""
STAGES = ["stages/benchmark.py", "stages/select_final.py", "stages/report.py",
          "src/shrinkflow/cli/compare.py"]
OPENERS = ["shrinkflow.cli.predict", "shrinkflow.model_files.open"]


def imports_of(watched: list[str], entries: list[str]) -> dict[str, list[str] | None]:
    loaded = subprocess.run([sys.executable, "-c", IMPORT_AND_LIST, ",".join(watched), *entries],
                            capture_output=True, text=True, cwd=ROOT)
    assert loaded.returncode == 0, loaded.stderr
    return json.loads(loaded.stdout)


@pytest.fixture(scope="module")
def stage_imports() -> dict[str, list[str] | None]:
    return imports_of(["torch", "onnxruntime"], [str(ROOT / s) for s in STAGES])


@pytest.fixture(scope="module")
def opener_imports() -> dict[str, list[str] | None]:
    return imports_of(["torch", "onnx"], OPENERS)


@pytest.mark.parametrize("script", STAGES)
def test_stage_imports_no_torch(script, stage_imports):
    found = stage_imports[str(ROOT / script)]
    assert found is not None, f"{script} not checked: an earlier script imported torch or ORT"
    assert found == [], f"{script} imports {' '.join(found)}"


@pytest.mark.parametrize("module", OPENERS)
def test_the_one_opener_and_predict_import_no_torch(module, opener_imports):
    """open_model is the one opener of model files, predict's too: its ONNX path must not need
    torch (tests/test_predict.py also runs predict with torch failing to import)."""
    found = opener_imports[module]
    assert found is not None, f"{module} not checked: an earlier module imported torch or onnx"
    assert found == [], f"{module} imports {' '.join(found)}"
