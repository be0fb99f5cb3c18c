"""Every command of the README's "Compare compression recipes" section, run for real on a
tiny-params copy of the project: a workspace experiment, a queued sweep, the comparisons,
promoting a winner and sharing it through a git remote and a DVC remote."""

import json
import re
import time

import pytest
import yaml
from pipeline_repo import dvc, make_repo, run

README_SWEEP = ["prune.ratio=0.3,0.5,0.7"]


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("exps")
    repo = make_repo(root / "repo")
    storage, origin = root / "dvc-storage", root / "origin.git"
    run(root, "git", "init", "-q", "--bare", str(origin))
    run(repo, "git", "remote", "add", "origin", str(origin))
    dvc(repo, "remote", "add", "-d", "storage", str(storage))
    dvc(repo, "repro")
    run(repo, "git", "add", "-A")
    run(repo, "git", "commit", "-q", "-m", "baseline")
    return {"repo": repo, "storage": storage, "origin": origin}


def test_queued_sweep_runs_every_value(project):
    repo = project["repo"]
    queued = dvc(repo, "exp", "run", "--queue", "-S", README_SWEEP[0])
    assert queued.stdout.count("Queued experiment") == 3, queued.stdout
    dvc(repo, "queue", "start", "-j", "2")
    deadline = time.time() + 600
    while time.time() < deadline:
        status = dvc(repo, "queue", "status").stdout
        if not re.search(r"\b(Queued|Running)\b", status):
            break
        time.sleep(3)
    dvc(repo, "queue", "stop", check=False)
    assert status.count("Success") == 3, status


def test_workspace_experiment_applies_params(project):
    repo = project["repo"]
    result = dvc(repo, "exp", "run", "-n", "kd-t2", "-S", "distill.T=2", "-S", "distill.alpha=0.9")
    assert "kd-t2" in result.stdout + result.stderr
    params = yaml.safe_load((repo / "params.yaml").read_text())
    assert params["distill"]["T"] == 2 and params["distill"]["alpha"] == 0.9
    assert "Running stage 'distill'" in result.stdout
    assert "Running stage 'train_teacher'" not in result.stdout


def test_exp_show_only_changed_lists_experiments_and_changed_params(project):
    out = dvc(project["repo"], "exp", "show", "--only-changed", "--no-pager", "--md").stdout
    assert "kd-t2" in out
    assert "prune.ratio" in out and "distill.T" in out
    assert "train_teacher" not in out and "teacher.train.epochs" not in out


def test_exp_diff_shows_the_changed_params(project):
    out = dvc(project["repo"], "exp", "diff", "HEAD", "kd-t2", "--md").stdout
    assert "distill.T" in out and "distill.alpha" in out


def test_compare_script_answers_the_question(project):
    repo = project["repo"]
    result = run(repo, "python", "stages/compare.py", "--max-drop", "100")
    # with every run inside the budget, the smallest file is the most pruned recipe
    smallest = next(line for line in result.stdout.splitlines() if "Smallest file:" in line)
    assert "prune.ratio=0.7" in smallest, result.stdout
    table = (repo / "compare/compare.md").read_text()
    assert table.count("|") > 10 and "kd-t2" in table
    assert (repo / "compare/compare_pareto.png").stat().st_size > 1000


def test_promote_with_branch_and_apply(project):
    repo = project["repo"]
    dvc(repo, "exp", "branch", "kd-t2", "kd-t2-branch")
    branches = run(repo, "git", "branch", "--list", "kd-t2-branch").stdout
    assert "kd-t2-branch" in branches
    branch_params = run(repo, "git", "show", "kd-t2-branch:params.yaml").stdout
    assert yaml.safe_load(branch_params)["distill"]["T"] == 2
    run(repo, "git", "checkout", "--", ".")
    dvc(repo, "checkout", "-f")
    dvc(repo, "exp", "apply", "kd-t2")
    assert yaml.safe_load((repo / "params.yaml").read_text())["distill"]["T"] == 2


def test_share_through_git_and_dvc_remotes(project):
    repo, storage, origin = project["repo"], project["storage"], project["origin"]
    run(repo, "git", "push", "-q", "origin", "main")
    pushed = dvc(repo, "push")
    assert re.search(r"\d+ files? pushed", pushed.stdout), pushed.stdout
    assert any(p.is_file() for p in storage.rglob("*"))
    dvc(repo, "exp", "push", "origin", "kd-t2")
    refs = run(origin, "git", "for-each-ref", "refs/exps").stdout
    assert refs.strip(), "no experiment refs on the git remote"
    metrics = json.loads((repo / "metrics/distill.json").read_text())
    assert "student_test_acc" in metrics
