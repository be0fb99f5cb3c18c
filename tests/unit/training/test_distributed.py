"""Training on several processes, on CPU with gloo: the collectives, DDP through ``fit``, the
batch split, the relaunch, and the real teacher stage relaunching itself under torchrun with
``nproc: 2`` (slow).

Each multi-process test pays for starting Python + torch in every process (~3-6 s here), so
the checks that need processes share one spawn (``two_ranks``), and every process starts through
the suite's stage server (stage_server.py: forked with torch imported) when it runs."""

from __future__ import annotations

import json
import os
import subprocess
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import yaml
from pipeline_repo import ROOT
from stage_server import server_python, spawned_from_server
from torch import nn

import shrinkflow.training.distributed
from shrinkflow.core.errors import ShrinkflowError
from shrinkflow.data.prepare import split_indices, write_prepared
from shrinkflow.data.prepared import load_prepared
from shrinkflow.data.sources import source_from_arrays
from shrinkflow.measure.metrics import accuracy
from shrinkflow.model_files.pt import load_model
from shrinkflow.nets.zoo import build_model, make_spec
from shrinkflow.params.common import ModelSpec, TrainConfig
from shrinkflow.params.load import validate_section
from shrinkflow.params.teacher import TeacherParams
from shrinkflow.training.distributed import all_reduce_mean, maybe_relaunch
from shrinkflow.training.loop import fit, iterate_batches, predict, train_supervised

pytestmark = pytest.mark.slow  # end to end: real stage processes

REPO = ROOT
CFG = TrainConfig(epochs=2, batch_size=64, lr=0.05, device="cpu", seed=0)


def banded(n: int, seed: int, noise_labels: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """1x8x8 uint8 images whose class k lights up band k (4 classes); ``noise_labels`` of the
    labels are then redrawn at random, so a model that learns the bands scores below 100 %."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, n)
    x = rng.integers(0, 80, (n, 1, 8, 8))
    for i, k in enumerate(y):
        x[i, :, 2 * k : 2 * k + 2, :] += 120
    flip = rng.random(n) < noise_labels
    y[flip] = rng.integers(0, 4, int(flip.sum()))
    return x.clip(0, 255).astype(np.uint8), y.astype(np.int64)


def as_split(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = banded(n, seed)
    return torch.from_numpy(x), torch.from_numpy(y)


class NoBatchNorm(nn.Module):
    """Conv + linear only: with no per-rank batch statistics, 2 ranks must match 1 process."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
                                  nn.Linear(4 * 8 * 8, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class ScaledCE(nn.Module):
    """A loss with a trainable parameter, standing in for the hint adapter."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, logits, targets, inputs):
        loss = nn.functional.cross_entropy(logits * self.scale, targets)
        return loss, {"ce": loss.detach()}


def no_bn_run(train, val) -> dict:
    torch.manual_seed(0)
    model, loss = NoBatchNorm(), ScaledCE()
    history = fit(model, train, val, CFG, loss_fn=loss, log=lambda _: None)
    return {"state": model.state_dict(), "scale": loss.scale.detach().clone(), "history": history}


def bn_run(train, val) -> dict:
    spec = make_spec(ModelSpec(widths=[4, 8], depth=1), 1, 4, [0.3], [0.3])
    torch.manual_seed(0)
    model = build_model(spec)
    history = fit(model, train, val, CFG, log=lambda _: None)
    return {"state": model.state_dict(), "history": history}


def _worker(rank: int, world: int, store: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=60))  # a hang fails the test instead
    result = {
        "mean64": all_reduce_mean(torch.tensor([rank, 10.0 * rank + 1], dtype=torch.float64)),
        "mean32": all_reduce_mean(torch.full((2, 3), float(rank + 1))),
        # 250 training images: 64-image batches end with 58, split 29 / 29, no padding
        "no_bn": no_bn_run(as_split(250, 0), as_split(40, 1)),
        # 251 images: an odd count, padded so both ranks take 4 batches of equal size
        "bn": [bn_run(as_split(251, 2), as_split(41, 3)) for _ in range(2)],
    }
    torch.save(result, Path(out) / f"rank{rank}.pt")
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> list[dict]:
    tmp = tmp_path_factory.mktemp("ranks")
    with spawned_from_server():
        mp.spawn(_worker, args=(2, str(tmp / "store"), str(tmp)), nprocs=2, join=True)
    return [torch.load(tmp / f"rank{r}.pt", weights_only=True) for r in range(2)]


def test_all_reduce_mean_averages_over_two_processes(two_ranks):
    for r in two_ranks:
        assert torch.equal(r["mean64"], torch.tensor([0.5, 6.0], dtype=torch.float64))
        assert torch.equal(r["mean32"], torch.full((2, 3), 1.5))
    assert all_reduce_mean(torch.tensor([3.0])).item() == 3.0  # one process: unchanged


def test_two_ranks_train_what_one_process_trains(two_ranks):
    """DDP-averaged gradients of half batches == one process's full-batch gradient (the loss's
    own parameter included), and the logged metrics are over both ranks' images."""
    one = no_bn_run(as_split(250, 0), as_split(40, 1))
    for r in two_ranks:
        two = r["no_bn"]
        for key, value in one["state"].items():
            torch.testing.assert_close(two["state"][key], value, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(two["scale"], one["scale"], rtol=1e-4, atol=1e-5)
        assert two["scale"].item() != 1.0
        for row_two, row_one in zip(two["history"], one["history"], strict=True):
            assert row_two.keys() == row_one.keys()
            for key in row_one:
                assert row_two[key] == pytest.approx(row_one[key], abs=2e-5), key


def test_ranks_agree_and_repeat(two_ranks):
    """Uneven data, batch norm: both ranks end with the same model (buffers averaged) and the
    same history, and a second run with the same seed and world size gives the same again."""
    a, b = (r["bn"][0] for r in two_ranks)
    for key in a["state"]:
        assert torch.equal(a["state"][key], b["state"][key]), key
    assert a["history"] == b["history"] and len(a["history"]) == CFG.epochs
    again = two_ranks[0]["bn"][1]
    assert again["history"] == a["history"]
    assert all(torch.equal(again["state"][k], v) for k, v in a["state"].items())


@pytest.mark.parametrize("n, world, batch", [(251, 2, 64), (250, 3, 63), (5, 4, 64)])
def test_every_rank_gets_the_same_batches_and_together_one_process_batches(n, world, batch):
    split = (torch.zeros(n, 1, 1, 1, dtype=torch.uint8), torch.arange(n))
    cpu = torch.device("cpu")

    def labels(rank: int, w: int) -> list[torch.Tensor]:
        gen = torch.Generator().manual_seed(7)
        return [yb for _, yb in iterate_batches(split, batch, cpu, gen, rank=rank, world=w)]

    one = labels(0, 1)
    ranks = [labels(r, world) for r in range(world)]
    assert len({tuple(len(b) for b in batches) for batches in ranks}) == 1  # same count, sizes
    for i, batch in enumerate(one):
        together = torch.cat([batches[i] for batches in ranks])
        assert set(together.tolist()) >= set(batch.tolist())  # padding only adds repeats
        assert len(together) - len(batch) < world
    assert sum(len(b) for b in ranks[0]) * world == n + (-n) % world


@pytest.fixture
def no_torchrun(monkeypatch):
    """Fail instead of launching anything, and start outside torchrun."""
    def refuse(_args):
        raise AssertionError("torchrun was started")

    monkeypatch.setattr(shrinkflow.training.distributed.torchrun, "run", refuse)
    for var in ("LOCAL_RANK", "RANK", "WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


def test_relaunch_only_when_asked_and_not_yet_under_torchrun(no_torchrun):
    maybe_relaunch(1)  # one process: returns, launches nothing
    for var, value in {"LOCAL_RANK": "0", "RANK": "0", "WORLD_SIZE": "4"}.items():
        no_torchrun.setenv(var, value)
    maybe_relaunch(4)  # already a torchrun worker: returns


def test_more_processes_than_gpus_is_one_line_naming_the_key(no_torchrun):
    no_torchrun.setattr(torch.cuda, "is_available", lambda: True)
    no_torchrun.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(ShrinkflowError, match=r"^distill\.train\.nproc = 4: only 2 CUDA device"):
        maybe_relaunch(4, "auto", "distill.train.nproc")


# --- the real stage and the launcher, in subprocesses ------------------------------------------


def test_a_failing_rank_fails_the_launch_with_its_exit_code(tmp_path):
    script = tmp_path / "job.py"
    script.write_text(
        "from shrinkflow.training.distributed import finish, launch, rank_and_world\n"
        "from shrinkflow.core.errors import ShrinkflowError, run_stage\n"
        "def main():\n"
        "    launch(2, 'cpu')\n"
        "    if rank_and_world()[0] == 1:\n"
        "        raise ShrinkflowError('rank one is unhappy')\n"
        "    finish()\n"
        "run_stage(main)\n"
    )
    run = subprocess.run([server_python(), str(script)], cwd=tmp_path, env=subprocess_env(),
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    assert run.stderr.count("error: rank one is unhappy") == 1
    assert run.stderr.splitlines()[-1] == (f"error: {script} under torchrun: rank 1 of 2 failed "
                                           "with exit code 2 (its messages are above)")


def subprocess_env() -> dict[str, str]:
    """The package on the path, and torchrun's workers started by ``server_python`` as the
    first process is (torchrun reads ``PYTHON_EXEC``)."""
    return {**os.environ, "PYTHON_EXEC": server_python(), "PYTHONPATH": os.pathsep.join(
        [str(REPO / "src"), *filter(None, [os.environ.get("PYTHONPATH")])])}


def test_teacher_stage_on_two_processes(tmp_path):
    """``teacher.train.nproc: 2``: the stage reruns itself under torchrun, trains with gloo, and
    rank 0 alone writes one set of outputs, as good as one process's."""
    images, labels = banded(2000, 0, noise_labels=0.2)  # test acc < 100 %: a point means 4 images
    split = split_indices(labels, 0.2, 0.2, 0)
    write_prepared(tmp_path / "data" / "prepared", source_from_arrays(images, labels, list("abcd")),
                   split, "synthetic")
    data = load_prepared(tmp_path / "data" / "prepared")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["teacher"]["model"].update(arch="cnn", widths=[8, 16], depth=1)
    params["teacher"]["train"].update(epochs=4, batch_size=64, lr=0.05, device="cpu", nproc=2)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    before = {p for p in tmp_path.rglob("*") if p.is_file()}

    run = subprocess.run([server_python(), str(REPO / "stages" / "train_teacher.py")],
                         cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout.count("[launch] torchrun --standalone --nproc-per-node=2") == 1
    assert run.stdout.count("-> models/teacher.pt") == 1  # rank 1 printed nothing
    assert run.stdout.count("[teacher] epoch") == 4

    written = {p.relative_to(tmp_path).as_posix()
               for p in tmp_path.rglob("*") if p.is_file() and p not in before}
    live = {w for w in written if w.startswith("dvclive/")}  # per-epoch progress, rank 0's only
    assert written - live == {"models/teacher.pt", "metrics/teacher.json",
                              "metrics/history_teacher.csv"}
    assert "dvclive/teacher/metrics.json" in live
    assert all(w.startswith("dvclive/teacher/") for w in live)
    teacher, _ = load_model(tmp_path / "models" / "teacher.pt")
    metrics = json.loads((tmp_path / "metrics" / "teacher.json").read_text())
    history = (tmp_path / "metrics" / "history_teacher.csv").read_text().splitlines()
    assert len(history) == 1 + 4
    # the saved model is the one fit validated (buffers averaged over the ranks before val)
    assert metrics["teacher_val_acc"] == pytest.approx(
        accuracy(predict(teacher, data.val[0]), data.val[1]), abs=1e-6)
    assert metrics["teacher_test_acc"] == pytest.approx(
        accuracy(predict(teacher, data.test[0]), data.test[1]), abs=1e-6)

    p = validate_section("teacher", params["teacher"], TeacherParams)
    one_cfg = p.train.model_copy(update={"nproc": 1})
    *_, one = train_supervised(p.model, one_cfg, data, "teacher")
    assert one["teacher_test_acc"] > 0.5  # it learned (4 classes: chance is 0.25)
    assert abs(metrics["teacher_test_acc"] - one["teacher_test_acc"]) <= 0.01
