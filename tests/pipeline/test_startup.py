"""Stages that never run a model in their own process start without torch or ONNX Runtime.

Importing torch costs about 2 s of CPU per stage run on 2 cores (measured: the benchmark's
parent imported its modules in 2.0-2.1 s with torch, 0.3 s without), paid again by every
experiment that reruns the stage. select, report and compare only read metrics; the benchmark's
parent only schedules the workers that time the models (``shrinkflow.measure.benchmark_worker``,
imported
by the workers alone). A new import that pulls torch back into one of them fails here.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LOAD_AND_LIST = """
import importlib.util, sys
spec = importlib.util.spec_from_file_location("stage", sys.argv[1])
spec.loader.exec_module(importlib.util.module_from_spec(spec))  # imports only: main() not run
print(" ".join(m for m in ("torch", "onnxruntime") if m in sys.modules))
"""


@pytest.mark.parametrize("script", ["stages/benchmark.py", "stages/select_final.py",
                                    "stages/report.py", "src/shrinkflow/cli/compare.py"])
def test_stage_imports_no_torch(script):
    path = ROOT / script
    loaded = subprocess.run([sys.executable, "-c", LOAD_AND_LIST, str(path)],
                            capture_output=True, text=True, cwd=ROOT)
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.split() == [], f"{script} imports {loaded.stdout.strip()}"


@pytest.mark.parametrize("module", ["shrinkflow.cli.predict", "shrinkflow.model_files.open"])
def test_the_one_opener_and_predict_import_no_torch(module):
    """open_model is the one opener of model files, predict's too: its ONNX path must not need
    torch (tests/test_predict.py also runs predict with torch failing to import)."""
    loaded = subprocess.run([sys.executable, "-c", f"import sys, {module}; "
                             "print(' '.join(m for m in ('torch', 'onnx') if m in sys.modules))"],
                            capture_output=True, text=True, cwd=ROOT)
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.split() == [], f"{module} imports {loaded.stdout.strip()}"
