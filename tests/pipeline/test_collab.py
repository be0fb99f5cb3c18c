"""A team working on one project, end to end, on tiny-params copies of it.

- Teammate round trip, with a local-folder DVC remote (and, for the baseline, with an S3 API:
  moto's server on 127.0.0.1): A shares the baseline and an experiment through a git remote and
  the DVC remote; a fresh clone B gets every model and prepared-data file byte for byte, a clean
  `dvc status` and a `dvc repro` that runs nothing; B pulls and applies A's experiment, runs one
  of its own and pushes it; A pulls it back and gets B's model bytes. The commands are the
  docs' (team page): the test reads their marked blocks (`<!-- test_collab: NAME -->`) and runs
  them, in the order a reader meets them (tests/test_docs.py checks that order), in an A that is
  a clone (it has an `origin` remote, as a user's clone of shrinkflow has).
- A queued grid, two at a time: paused mid-run, a running experiment's current epoch (the
  training stage's progress.json) is what `dvc exp show` reports; both runs train at once and
  each result matches its own params; a failed run is found in `dvc queue logs` and removed;
  the results go out as CSV and, as JSON, into shrinkflow-compare.
- DVC's run cache stays empty: every out is `persist: true` (docs: team, "Where the pipeline
  runs").
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import re
import shlex
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from doc_blocks import block_commands
from pipeline_repo import copy_repo, dvc, env, finished_experiments, run

pytestmark = pytest.mark.slow  # end to end: real stage processes

# Placeholders in the docs' blocks -> what the test substitutes (filled per round trip).
GIT_URL = "git@git.example.com:team/shrinkflow.git"
LOCAL_REMOTE = "/mnt/shared/shrinkflow-cache"
S3_URL = "s3://team-bucket/shrinkflow"
S3_ENDPOINT = "https://minio.example.com:9000"
BUCKET = "team-bucket"
# moto accepts any key; they only have to be present (botocore refuses to sign without them)
AWS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
       "AWS_DEFAULT_REGION": "us-east-1"}
TRACKED = ("models", "data/prepared")  # what `dvc pull` must bring back byte for byte


# --- the docs' commands ------------------------------------------------------------------


def run_block(cwd: Path, name: str, subs: dict[str, str] | None = None,
              extra_env: dict[str, str] | None = None) -> tuple[Path, str]:
    """Run a docs block as a shell would (``&&`` chains, ``cd``, ``> file``).

    Returns the directory it ended in and every command's output, each after a ``$ command``
    line. Only the placeholders in ``subs`` (URLs, paths) change; everything else is verbatim.
    Output goes through a file, not a pipe: `dvc queue start` leaves a worker daemon holding
    its stdout, and reading a pipe to its end would wait for the whole queue to finish.
    """
    output = []
    for line in block_commands(name):
        for old, new in (subs or {}).items():
            line = line.replace(old, new)
        for command in line.split(" && "):
            args = shlex.split(command)
            if args[0] == "cd":
                cwd = cwd / args[1]
                continue
            target = None
            if ">" in args:
                args, target = args[: args.index(">")], args[args.index(">") + 1]
            with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
                code = subprocess.run(args, cwd=cwd, env={**clean_env(), **(extra_env or {})},
                                      stdout=out, stderr=err).returncode
                out.seek(0)
                err.seek(0)
                stdout, stderr = out.read(), err.read()
            if code != 0:
                raise AssertionError(f"docs block {name!r}: `{command}` failed in {cwd}:\n"
                                     f"{stdout}\n{stderr}")
            if target:
                (cwd / target).write_text(stdout)
            output.append(f"$ {command}\n{'' if target else stdout}{stderr}")
    return cwd, "\n".join(output)


def clean_env() -> dict[str, str]:
    """pipeline_repo's environment with no AWS credentials: each test says where they come from."""
    hidden = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"}
    return {**{k: v for k, v in env().items() if k not in hidden},
            "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent", "AWS_CONFIG_FILE": "/nonexistent"}


# --- the shared reproduced project --------------------------------------------------------


@pytest.fixture
def project(reproduced_template) -> Path:
    """The session's reproduced tiny project (conftest): read it, copy it to change it."""
    return reproduced_template.path


def digests(repo: Path) -> dict[str, str]:
    """sha256 of every file under the DVC-tracked model and data folders."""
    return {str(p.relative_to(repo)): hashlib.sha256(p.read_bytes()).hexdigest()
            for folder in TRACKED for p in sorted((repo / folder).rglob("*")) if p.is_file()}


def params_of(repo: Path) -> dict:
    return yaml.safe_load((repo / "params.yaml").read_text())


# --- S3: moto's server on 127.0.0.1 -------------------------------------------------------


@pytest.fixture(scope="module")
def s3():
    """A real S3 API on a free port of 127.0.0.1 for the module, with the team's bucket.

    Yields the endpoint URL and a boto3 client to look into the bucket."""
    server_mod = pytest.importorskip(
        "moto.server", reason="moto's S3 server is not installed: pip install -e '.[dev]'")
    pytest.importorskip("dvc_s3", reason="dvc-s3 is not installed: pip install -e '.[s3]'")
    boto3 = pytest.importorskip("boto3", reason="boto3 (moto's dependency) is not installed")
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request otherwise
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
    client.create_bucket(Bucket=BUCKET)
    yield {"endpoint": endpoint, "client": client}
    server.stop()


# --- 1 + 2: the teammate round trip ---------------------------------------------------------


def round_trip(project: Path, root: Path, remote_block: str, subs: dict[str, str],
               a_env: dict[str, str], b_env: dict[str, str], experiments: bool = True) -> None:
    """A -> (git remote + DVC remote) -> B -> remote -> A, with the docs' commands; without
    ``experiments``, the baseline only: A's remotes and push, B's clone (the experiments travel
    by the same commands over the same DVC code whatever the remote: the folder's walk has them,
    and each costs the suite an experiment run)."""
    baseline = digests(project)
    assert baseline, "the reproduced project has no models or prepared data"
    origin = root / "origin.git"
    run(root, "git", "init", "-q", "--bare", "-b", "main", str(origin))
    subs = {GIT_URL: str(origin), **subs}
    a = copy_repo(project, root / "a")
    run(a, "git", "remote", "add", "origin", str(project))  # A is a clone: `origin` is taken

    # A: the remotes, once; then share the baseline
    run_block(a, remote_block, subs, a_env)
    assert not run(a, "git", "status", "--porcelain").stdout.strip(), "A left changes behind"
    assert run(a, "git", "check-ignore", ".dvc/config.local").returncode == 0
    _, out = run_block(a, "share", subs, a_env)
    assert out.split("$ git push")[0].strip() == "$ git status --short", out  # nothing to commit

    # A: an experiment, shared
    if experiments:
        run_block(a, "share-exp", subs, a_env)
        a_exp = digests(a)
        assert params_of(a)["quantize"]["calibration_samples"] == 16
        changed = {k for k in a_exp if a_exp[k] != baseline.get(k)}
        assert "models/quantized.onnx" in changed, "A's experiment did not change the int8 model"

    # B: a fresh clone gets the baseline back, byte for byte, with nothing to rerun
    b, out = run_block(root, "clone", subs, b_env)
    assert digests(b) == baseline
    assert "Data and pipelines are up to date" in out.split("$ dvc status")[1], out
    repro = out.split("$ dvc repro")[1]
    assert "Running stage" not in repro and "up to date" in repro, repro
    assert not run(b, "git", "status", "--porcelain").stdout.strip()
    if not experiments:
        return

    # B: A's experiment, its params and its artifacts
    run_block(b, "exp-pull", subs, b_env)
    assert params_of(b)["quantize"]["calibration_samples"] == 16
    assert digests(b) == a_exp
    assert (json.loads((b / "metrics/eval_quantized.json").read_text())
            == json.loads((a / "metrics/eval_quantized.json").read_text()))

    # B: one more param on top of it, as an experiment of its own, pushed
    run_block(b, "reply", subs, b_env)
    b_exp = digests(b)
    assert params_of(b)["quantize"]["per_channel"] is False
    assert b_exp["models/quantized.onnx"] != a_exp["models/quantized.onnx"]

    # A: pulls B's experiment back; B's model bytes can only have come through the remote
    run_block(a, "pull-back", subs, a_env)
    assert params_of(a)["quantize"]["per_channel"] is False
    assert params_of(a)["quantize"]["calibration_samples"] == 16
    assert digests(a) == b_exp


def test_round_trip_through_a_local_folder_remote(project, tmp_path):
    storage = tmp_path / "dvc-storage"
    round_trip(project, tmp_path, "remote-folder", {LOCAL_REMOTE: str(storage)}, {}, {})
    assert any(p.is_file() for p in storage.rglob("*"))


def test_share_through_s3(project, tmp_path, s3):
    """A pushes with the keys in .dvc/config.local (the docs' block), B pulls with them exported,
    as CI would; the experiments' commands are the local-folder walk's."""
    prefix = tmp_path.name
    subs = {S3_URL: f"s3://{BUCKET}/{prefix}", S3_ENDPOINT: s3["endpoint"]}
    round_trip(project, tmp_path, "remote-s3", subs, a_env={}, b_env=AWS, experiments=False)
    committed = (tmp_path / "a/.dvc/config").read_text()
    assert s3["endpoint"] in committed and "my-secret" not in committed, committed
    assert "my-secret" in (tmp_path / "a/.dvc/config.local").read_text()
    assert not (tmp_path / "shrinkflow/.dvc/config.local").exists()
    stored = s3["client"].list_objects_v2(Bucket=BUCKET, Prefix=prefix)
    assert stored.get("KeyCount", 0) > 0, "nothing reached the S3 bucket"


# --- 3 + 4: a queued grid, two at a time, live progress ------------------------------------


def exp_rows(repo: Path) -> list[dict]:
    """Experiments of `dvc exp show --json`: name, state, rev, temp workspace, params, metrics."""
    rows = []
    for commit in json.loads(dvc(repo, "exp", "show", "--json").stdout):
        for exp in commit.get("experiments") or []:
            rev = exp["revs"][0]
            data = rev.get("data") or {}
            executor = exp.get("executor") or {}
            rows.append({
                "name": exp.get("name") or rev.get("name"),
                "state": executor.get("state", "done"),
                "root": os.path.realpath((executor.get("local") or {}).get("root") or "-"),
                "rev": rev.get("rev"),
                "params": ((data.get("params") or {}).get("params.yaml") or {}).get("data", {}),
                "metrics": {f: (m or {}).get("data", {})
                            for f, m in (data.get("metrics") or {}).items()},
            })
    return rows


def live_epoch(row: dict) -> int | None:
    return row["metrics"].get("dvclive/teacher/progress.json", {}).get("teacher_epochs_done")


def runs_teacher_stage(pid: str, cmdline: bytes) -> bool:
    """Started as `python stages/train_teacher.py`, or forked by the suite's stage server, which
    names the child after its script (the `python` that asked the server is not it)."""
    if b"stage_server.py" in cmdline:
        return Path(f"/proc/{pid}/comm").read_text().strip() == "train_teacher"
    return b"stages/train_teacher.py" in cmdline


def training_processes(repo: Path) -> dict[str, int]:
    """Temp workspace -> pid of the `train_teacher` stage running there (Linux /proc)."""
    found, exps = {}, os.path.realpath(repo / ".dvc/tmp/exps")
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            cwd = os.readlink(f"/proc/{pid}/cwd")
            teacher = runs_teacher_stage(pid, cmdline)
        except OSError:  # it ended meanwhile
            continue
        if teacher and cwd.startswith(exps):
            found[cwd] = int(pid)
    return found


def file_epoch(workspace: str) -> int | None:
    """The epochs done a temp workspace's live progress file holds (None: absent or being
    written)."""
    try:
        return json.loads(Path(workspace, "dvclive/teacher/progress.json").read_text()).get(
            "teacher_epochs_done")
    except (OSError, ValueError):
        return None


_EPOCHS: dict[str, int] = {}  # temp workspace -> its teacher.train.epochs, read once


def own_epochs(workspace: str) -> int | None:
    """The epochs a temp workspace trains for (None until its params.yaml is readable). Read
    once per workspace: parsing YAML 50 times a second took CPU the queued runs need."""
    if workspace not in _EPOCHS:
        try:
            _EPOCHS[workspace] = params_of(Path(workspace))["teacher"]["train"]["epochs"]
        except (OSError, ValueError, TypeError, KeyError):
            return None
    return _EPOCHS[workspace]


def signal_all(pids, sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:  # it ended meanwhile
            pass


@pytest.mark.skipif(not Path("/proc/self/cwd").exists(), reason="finds the runs through /proc")
def test_queued_grid_shows_live_progress_and_keeps_runs_apart(project, tmp_path, request):
    repo = copy_repo(project, tmp_path / "repo")
    base_epochs = params_of(repo)["teacher"]["train"]["epochs"]
    _, out = run_block(repo, "grid-teacher")  # the grid, and bad-arch: a run that fails
    request.addfinalizer(lambda: dvc(repo, "queue", "stop", "--kill", check=False))
    grid = [int(e) for e in re.search(r"teacher\.train\.epochs=([\d,]+)",
                                      " ".join(block_commands("grid-teacher"))).group(1).split(",")]
    assert out.count("Queued experiment") == len(grid) + 1, out
    assert min(grid) > base_epochs + 2, "the grid must train longer than the baseline"

    # Watch the training processes of the two temp workspaces. Once one is mid-run (its live
    # file past the baseline's epochs, short of its own), pause every training process, so
    # the machine's speed cannot race the check, and ask `dvc exp show` what it sees. A look
    # every 0.1 s (a /proc scan, a few ms), git's refs once a second: the window is at least two
    # epochs (0.3-0.4 s each on an idle machine, measured), and the CPU the watching takes is
    # the queued runs' (every 20 ms, with a git call each time while nothing trained, before).
    most_at_once, seen = 0, None
    deadline, refs_seen = time.time() + 900, 0.0
    while seen is None and time.time() < deadline:
        running = {w: pid for w, pid in training_processes(repo).items()
                   if own_epochs(w) in grid}  # not bad-arch, which fails in its own workspace
        most_at_once = max(most_at_once, len(running))
        for workspace in running:
            epoch, own = file_epoch(workspace), own_epochs(workspace)
            if epoch is not None and base_epochs < epoch < own:
                signal_all(running.values(), signal.SIGSTOP)
                try:
                    epoch = file_epoch(workspace)  # None: paused while DVCLive was writing
                    rows = {r["root"]: r for r in exp_rows(repo) if r["state"] == "running"}
                finally:
                    signal_all(running.values(), signal.SIGCONT)
                if epoch is not None:
                    seen = (workspace, epoch, own, rows.get(workspace))
                break
        if not running and time.time() - refs_seen > 1:
            if finished_experiments(repo) >= len(grid):
                break  # every grid run finished before one was seen mid-run
            refs_seen = time.time()
        time.sleep(0.1)
    assert seen, "never saw a training run between its first and its last epoch"
    workspace, epoch, own, row = seen
    assert row is not None, f"`dvc exp show` lists no running experiment in {workspace}"
    assert row["params"]["teacher"]["train"]["epochs"] == own
    assert live_epoch(row) == epoch and base_epochs < epoch < own, (row, epoch)

    while finished_experiments(repo) < len(grid):
        assert time.time() < deadline, "the grid's runs did not finish"
        running = [w for w in training_processes(repo) if own_epochs(w) in grid]
        most_at_once = max(most_at_once, len(running))
        time.sleep(0.2)
    # bad-arch, queued last, fails in seconds once a worker is free; wait for the whole queue
    while re.search(r"\b(Queued|Running)\b", status := dvc(repo, "queue", "status").stdout):
        assert time.time() < deadline, f"the queue did not finish:\n{status}"
        time.sleep(2)
    assert most_at_once == 2, "the grid's two experiments never trained at the same time"

    # each finished experiment matches its own params, not its neighbour's
    assert status.count("Success") == 2 and status.count("Failed") == 1, status
    done = [r for r in exp_rows(repo) if r["state"] in ("success", "done")]
    assert sorted(r["params"]["teacher"]["train"]["epochs"] for r in done) == sorted(grid)
    for r in done:
        own = r["params"]["teacher"]["train"]["epochs"]
        assert live_epoch(r) == own, r
        history = run(repo, "git", "show", f"{r['rev']}:metrics/history_teacher.csv").stdout
        assert [int(row["epoch"]) for row in csv.DictReader(io.StringIO(history))] == list(
            range(1, own + 1))

    # the failed run: its log names the bad value; it is removed
    _, out = run_block(repo, "failed-logs")
    assert "teacher.model.arch" in out and "vgg" in out, out
    run_block(repo, "failed-remove")
    assert "Failed" not in dvc(repo, "queue", "status").stdout

    # results as CSV and JSON; the JSON into the compare script
    run_block(repo, "show-compare")
    header = next(csv.reader(io.StringIO((repo / "exps.csv").read_text())))
    assert "teacher_epochs_done" in header and "teacher.train.epochs" in header, header
    table = (repo / "compare/compare.md").read_text()
    assert all(r["name"] in table for r in done), table


# --- 5: the run cache ----------------------------------------------------------------------


def test_persist_outs_keep_dvc_run_cache_empty(project):
    """DVC never saves a stage with a `persist: true` out to its run cache (dvc/stage/cache.py
    `_can_hash`), and every out here is persistent: `dvc push --run-cache` has nothing to send."""
    stages = yaml.safe_load((project / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        body = stage.get("do", stage)
        for kind in ("outs", "metrics", "plots"):
            for out in body.get(kind, []):
                spec = next(iter(out.values())) if isinstance(out, dict) else {}
                assert spec.get("persist") is True, f"{name}: {out} is not persist: true"
    runs = project / ".dvc/cache/runs"
    assert not runs.exists() or not any(runs.rglob("*")), list(runs.rglob("*"))

