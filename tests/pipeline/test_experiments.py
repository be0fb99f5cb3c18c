"""Every command of the docs' "Compare compression recipes" section (docs/experiments.md), run
for real on a tiny-params copy of the project: a queued sweep, a workspace experiment, the
comparisons, promoting a winner, and sharing it through a git remote and a DVC remote (the
team walk itself, read top to bottom, is tests/test_collab.py).

The experiments run once, in the module's own copy of the session's reproduced repo
(`experiments`); tests that only read it share it, tests that change it (compare writes files,
promote checks out, share adds remotes) each work on a copy of that, so no test depends on
another's changes or order.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from pipeline_repo import copy_repo, dvc, env, finished_experiments, ran_stages, run
from stage_server import alive

pytestmark = pytest.mark.slow  # end to end: real stage processes

DOCS_SWEEP = ["prune.ratio=0.3,0.5,0.7"]
UPSTREAM_OF_DISTILL = {"prepare", "train_teacher", "train_student_scratch",
                       "evaluate@teacher", "evaluate@student_scratch"}


def start_queue(repo: Path, jobs: int = 2) -> None:
    """`dvc queue start` (the docs' command). It leaves a daemon that keeps the command's
    stdout and stderr open until its workers exit, so they go to a file: captured through a pipe,
    the call blocks until the queue is done, and forever when a worker fails to exit (seen here
    once: a worker's monitor logged "shutting down due to empty queue" while its task still ran,
    then it slept on after the task; dvc-task issue #77)."""
    log = repo.parent / "queue-start.log"
    with log.open("a") as out:
        result = subprocess.run([sys.executable, "-m", "dvc", "queue", "start", "-j", str(jobs)],
                                cwd=repo, env=env(), stdout=out, stderr=subprocess.STDOUT)
    assert result.returncode == 0, log.read_text()


def wait_for_queue(repo: Path, expected: int, timeout: float = 900) -> str:
    """Block until no queued experiment is Queued or Running; returns `dvc queue status`.

    Finished experiments are counted from their git refs (milliseconds); `dvc queue status`
    costs a second of CPU that the queued runs need, so it is asked only once they all have a
    ref, or every 30 s to notice a failure. Workers that stopped with experiments still queued
    (dvc issue #10562) are started again, as its maintainers advise.
    """
    deadline, asked, status = time.time() + timeout, time.time(), ""
    while time.time() < deadline:
        if finished_experiments(repo) >= expected or time.time() - asked > 30:
            status, asked = dvc(repo, "queue", "status").stdout, time.time()
            if not re.search(r"\b(Queued|Running)\b", status):
                return status
            if "Running" not in status and re.search(r"Worker status: 0 active", status):
                start_queue(repo)
        time.sleep(1)
    raise AssertionError(f"queued experiments still running after {timeout:.0f} s:\n{status}")


def stop_queue(repo: Path, grace: float = 30) -> None:
    """`dvc queue stop`, then end any worker this test started that is still alive after
    ``grace`` seconds (by the pid DVC recorded for it), so no daemon outlives the session."""
    dvc(repo, "queue", "stop", check=False)
    pids = [json.loads(f.read_text()).get("pid")
            for f in (repo / ".dvc/tmp/exps/celery").glob("dvc-exp-worker-*.json")]
    deadline = time.time() + grace
    for pid in filter(None, pids):
        while time.time() < deadline and alive(pid):
            time.sleep(0.5)
        if alive(pid):
            os.kill(pid, signal.SIGTERM)


@pytest.fixture(scope="module")
def experiments(reproduced_template, tmp_path_factory):
    """The docs' queued sweep and, while the queue runs it, the workspace experiment kd-t2
    (queued first: `dvc exp run --queue` stashes each run's params as it queues them, so kd-t2's
    later change of the workspace is not in them). Run side by side, the two took 103 s where
    one after the other took 155 s (one run each, quiet machine). The DVC remote is committed
    first: `dvc exp push` reads the remote config of the experiment's commit."""
    root = tmp_path_factory.mktemp("exps")
    repo = copy_repo(reproduced_template.path, root / "repo")
    dvc(repo, "remote", "add", "-d", "storage", str(root / "dvc-storage"))
    run(repo, "git", "commit", "-q", "-m", "DVC remote", ".dvc/config")
    queued = dvc(repo, "exp", "run", "--queue", "-S", DOCS_SWEEP[0])
    start_queue(repo)
    workspace = dvc(repo, "exp", "run", "-n", "kd-t2", "-S", "distill.T=2", "-S",
                    "distill.alpha=0.9")
    status = wait_for_queue(repo, queued.stdout.count("Queued experiment"))
    stop_queue(repo)
    return {"repo": repo, "storage": root / "dvc-storage", "queued": queued.stdout,
            "status": status, "kd-t2": workspace}


@pytest.fixture
def own_copy(experiments, tmp_path) -> Path:
    """A copy of the experimented repo, experiments (git refs) and cache included."""
    return copy_repo(experiments["repo"], tmp_path / "repo")


def test_queued_sweep_runs_every_value(experiments):
    assert experiments["queued"].count("Queued experiment") == 3, experiments["queued"]
    assert experiments["status"].count("Success") == 3, experiments["status"]


def test_workspace_experiment_applies_params_and_reruns_from_distill(experiments):
    result = experiments["kd-t2"]
    assert "kd-t2" in result.stdout + result.stderr
    params = yaml.safe_load((experiments["repo"] / "params.yaml").read_text())
    assert params["distill"]["T"] == 2 and params["distill"]["alpha"] == 0.9
    ran = ran_stages(result.stdout)
    # the changed student really flows downstream; nothing upstream of distill reruns
    assert {"distill", "prune", "quantize", "benchmark", "report"} <= ran, ran
    assert not ran & UPSTREAM_OF_DISTILL, ran


def test_exp_show_only_changed_lists_experiments_and_changed_params(experiments):
    out = dvc(experiments["repo"], "exp", "show", "--only-changed", "--no-pager", "--md").stdout
    assert "kd-t2" in out
    assert "prune.ratio" in out and "distill.T" in out
    assert "train_teacher" not in out and "teacher.train.epochs" not in out


def test_exp_show_only_changed_fits_200_columns(experiments):
    """docs/results.md's comparison view: after the sweep and kd-t2 (distill.T, distill.alpha),
    on a 200-column terminal (a pseudo-terminal through `script`: DVC sizes its table to the
    terminal and folds the columns that do not fit into one "…"), every column shows, with the
    changed params and the final model's figures. rich takes COLUMNS over the terminal's size
    and assumes 80 columns under TERM=dumb, so both are set: a CI runner set COLUMNS=80, and
    `script` ran the command with SHELL=/bin/sh, which (unlike bash) does not refresh COLUMNS
    after `stty` (reproduced here: rich saw 80 columns, then 200 with the export)."""
    command = ("stty cols 200 rows 50; export TERM=xterm-256color COLUMNS=200 LINES=50; "
               "python -m dvc exp show --only-changed --no-pager "
               "--drop '.*/|.*\\.yaml$|metrics$|.*_low$|.*_high$|Created|Executor|.*_acc$|"
               "test_images|final_within_budget' --keep 'final_acc$'")
    result = run(experiments["repo"], "script", "-qc", command, "/dev/null")
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", result.stdout).replace("\r", "")
    assert max(len(line) for line in text.splitlines()) <= 200, text
    assert "distill.T" in text and "final_acc" in text and "final_speedup" in text, text
    assert "…" not in text, text  # no column folded away, no header or value cut short


def test_exp_diff_shows_the_changed_params(experiments):
    out = dvc(experiments["repo"], "exp", "diff", "HEAD", "kd-t2", "--md").stdout
    assert "distill.T" in out and "distill.alpha" in out


def test_compare_script_answers_the_question(own_copy):
    result = run(own_copy, sys.executable, "-m", "shrinkflow.cli.compare", "--max-drop", "100")
    # every run is inside a 100-point budget: the answer names a run whose shipped file is the
    # smallest of all, as `dvc exp show` records them
    from shrinkflow.results.compare import experiment_table, parse_exp_show

    runs = json.loads(dvc(own_copy, "exp", "show", "--json").stdout)
    sizes = experiment_table(parse_exp_show(runs)).set_index("name")["file_bytes"]
    smallest = next(line for line in result.stdout.splitlines() if "Smallest file:" in line)
    named = re.search(r"Smallest file: `([^`]+)`", smallest).group(1)
    assert sizes[named] == sizes.min(), result.stdout
    table = (own_copy / "compare/compare.md").read_text()
    assert table.count("|") > 10 and "kd-t2" in table
    assert (own_copy / "compare/compare_pareto.png").stat().st_size > 1000


def test_promote_with_branch_and_apply(own_copy):
    dvc(own_copy, "exp", "branch", "kd-t2", "kd-t2-branch")
    branches = run(own_copy, "git", "branch", "--list", "kd-t2-branch").stdout
    assert "kd-t2-branch" in branches
    branch_params = run(own_copy, "git", "show", "kd-t2-branch:params.yaml").stdout
    assert yaml.safe_load(branch_params)["distill"]["T"] == 2
    run(own_copy, "git", "checkout", "--", ".")
    dvc(own_copy, "checkout", "-f")
    assert yaml.safe_load((own_copy / "params.yaml").read_text())["distill"]["T"] != 2
    dvc(own_copy, "exp", "apply", "kd-t2")
    assert yaml.safe_load((own_copy / "params.yaml").read_text())["distill"]["T"] == 2


def test_share_through_git_and_dvc_remotes(experiments, own_copy, tmp_path):
    storage, origin = experiments["storage"], tmp_path / "origin.git"  # only this test pushes
    run(tmp_path, "git", "init", "-q", "--bare", str(origin))
    run(own_copy, "git", "remote", "add", "origin", str(origin))
    run(own_copy, "git", "push", "-q", "origin", "main")
    pushed = dvc(own_copy, "push")
    assert re.search(r"\d+ files? pushed", pushed.stdout), pushed.stdout
    assert any(p.is_file() for p in storage.rglob("*"))
    dvc(own_copy, "exp", "push", "origin", "kd-t2")
    refs = run(origin, "git", "for-each-ref", "refs/exps").stdout
    assert refs.strip(), "no experiment refs on the git remote"
    metrics = json.loads((own_copy / "metrics/distill.json").read_text())
    assert "student_test_acc" in metrics
