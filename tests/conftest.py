"""Shared test inputs: tiny synthetic data (prepared_files.make_prepared), and one tiny-params
copy of the project reproduced once per session for the end-to-end tests."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from filelock import FileLock
from pipeline_repo import copy_repo, env, make_repo, run
from prepared_files import make_prepared
from stage_server import StageServer

from shrinkflow.data.prepared import Prepared


@pytest.fixture
def tiny_data() -> Prepared:
    torch.manual_seed(0)
    return make_prepared()


@pytest.fixture(scope="module")
def tiny_data_shared() -> Prepared:
    """The same data as ``tiny_data``, for module-scoped fixtures that train once per file.
    Tests share it: read it, never change it in place."""
    return make_prepared()


@pytest.fixture(scope="session", autouse=True)
def _one_thread_session():
    """One thread from the start, so module-scoped fixtures train like the tests do."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(autouse=True)
def _one_thread():
    """Keep unit tests deterministic and light on a 2-core machine; undo a test's own change."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@dataclass(frozen=True)
class Reproduced:
    path: Path  # a committed git repo with every stage's outputs; never change it, copy it
    first_repro: str  # stdout of the `dvc repro` that built it


def uses_reproduced_repo(item: pytest.Item) -> bool:
    return "reproduced_template" in getattr(item, "fixturenames", ())


# The order files start in (each runs on one worker: `--dist loadfile`; pyproject.toml keeps
# xdist from reordering them by their number of tests, which started the one-test files last: a
# suite ended with test_detection_pipeline.py alone on one worker for 31 s, queued behind
# test_collab.py, while the other worker had nothing left). First the long files that need no
# shared repo, so they run while it reproduces; then the other files; then those that use it,
# the two longest (test_collab, test_experiments: 70-90 s each on one worker) at once, one on
# each worker, and the shorter ones after them to even out the ends (a worker takes its next
# file while its last two tests run, so a long file queued last ends the suite alone).
FIRST = ["test_detection_pipeline.py", "test_families.py", "test_distributed.py",
         "test_photo_pipeline.py"]
SHARED_REPO_ORDER = ["test_collab.py", "test_experiments.py", "test_ladder.py",
                     "test_select_pipeline.py", "test_bad_input.py", "test_pipeline.py"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Files in the order above (stable otherwise); no test depends on the order."""
    shared = {item.path for item in items if uses_reproduced_repo(item)}

    def order(item: pytest.Item) -> tuple[int, int]:
        name = item.path.name
        if item.path in shared:
            known = name in SHARED_REPO_ORDER
            return 2, SHARED_REPO_ORDER.index(name) if known else len(SHARED_REPO_ORDER)
        return (0, FIRST.index(name)) if name in FIRST else (1, 0)

    items.sort(key=order)


def shared_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of this session that every pytest-xdist worker sees: each worker is a process
    with its own basetemp (.../pytest-N/popen-gwK), and their parent belongs to the session."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def write_returncode(root: Path, code: str) -> None:
    """The repro's exit code, in a file every worker waits for (renamed in: never half-read)."""
    (root / "returncode.tmp").write_text(code)
    (root / "returncode.tmp").replace(root / "returncode")


@pytest.fixture(scope="session", autouse=True)
def _stage_server(request):
    """Every `dvc` run of the suite starts its stage processes from a server that has imported
    torch once (stage_server.py): the end-to-end tests start about 300 of them, and each spent
    2-4 s on imports. Only when a selected test runs DVC (not under `-m "not slow"`)."""
    if not any(item.get_closest_marker("slow") for item in request.session.items):
        yield None
        return
    server = StageServer(env())
    os.environ.update(server.variables())  # env() puts the shim first on PATH
    yield server
    for key in server.variables():
        os.environ.pop(key, None)
    server.close()


@pytest.fixture(scope="session", autouse=True)
def _reproduce_in_background(_stage_server, request, tmp_path_factory):
    """Start `dvc repro` of the shared tiny project as the session starts, if a selected test
    needs it (not under `-m "not slow"`): the unit tests run meanwhile on the other core. Under
    pytest-xdist the first worker starts it and every worker uses it (reproduced_template)."""
    if not any(uses_reproduced_repo(item) for item in request.session.items):
        yield None
        return
    root = shared_root(tmp_path_factory) / "reproduced"
    proc = None
    with FileLock(f"{root}.lock"):
        if not root.exists():
            root.mkdir()
            log = (root / "repro.log").open("w")
            try:
                path = make_repo(root / "repo")
                proc = subprocess.Popen([sys.executable, "-m", "dvc", "repro"], cwd=path,
                                        env=env(), stdout=log, stderr=subprocess.STDOUT)
            except BaseException:
                write_returncode(root, "make_repo failed")  # nobody waits forever
                raise
            threading.Thread(target=lambda: write_returncode(root, str(proc.wait())),
                             daemon=True).start()
    yield root
    if proc is not None and proc.poll() is None:
        if request.session.shouldfail or request.session.shouldstop:  # -x, Ctrl-C
            proc.terminate()
        proc.wait()  # other workers may still be waiting for it


@pytest.fixture(scope="session")
def reproduced_template(_reproduce_in_background, tmp_path_factory) -> Reproduced:
    """The project with tiny params (pipeline_repo.TINY), `dvc repro` run once and the result
    committed (`dvc exp run --queue` only sees committed files). Shared by every end-to-end test
    of the session (and every xdist worker): reproducing costs minutes, a copy (`copy_repo`) a
    tenth of a second. Read it, never change it: use `reproduced_repo` or `copy_repo` for a copy
    you can change."""
    root = _reproduce_in_background
    done = root / "returncode"
    while not done.exists():
        time.sleep(0.2)
    log = (root / "repro.log").read_text()
    assert done.read_text() == "0", f"dvc repro of the tiny project failed:\n{log}"
    with FileLock(f"{root}.lock"):
        if not (root / "committed").exists():
            run(root / "repo", "git", "add", "-A")
            run(root / "repo", "git", "commit", "-q", "-m", "reproduced")
            (root / "committed").touch()
    return Reproduced(root / "repo", log)


@pytest.fixture
def reproduced_repo(reproduced_template, tmp_path) -> Path:
    """A fresh copy of the reproduced tiny project for this test alone: change it freely."""
    return copy_repo(reproduced_template.path, tmp_path / "repo")
