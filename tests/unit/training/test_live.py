"""Live progress: fit's on_epoch hook and the DVCLive files it keeps current while training."""

import csv
import errno
import json
import os

import torch

from shrinkflow.nets.zoo import build_model, make_spec
from shrinkflow.params.common import ModelSpec, TrainConfig
from shrinkflow.training.live import live_progress
from shrinkflow.training.loop import fit


def tiny_model(data):
    meta = data.meta
    spec = make_spec(ModelSpec(widths=[4, 8]), meta["shape"][0], meta["num_classes"],
                     meta["mean"], meta["std"])
    return build_model(spec)


def test_each_epoch_is_on_disk_before_the_next_starts(tiny_data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no git or DVC repo around: DVCLive only writes its files
    torch.manual_seed(0)
    seen = []
    with live_progress("dvclive/t", "t") as log_epoch:

        def on_epoch(row):
            log_epoch(row)
            seen.append((row, json.loads((tmp_path / "dvclive/t/metrics.json").read_text())))

        history = fit(tiny_model(tiny_data), tiny_data.train, tiny_data.val,
                      TrainConfig(epochs=3), log=lambda _: None, on_epoch=on_epoch)
    assert [row for row, _ in seen] == history
    for epoch, (row, live) in enumerate(seen, start=1):
        assert live["t_live_epoch"] == epoch and live["step"] == epoch - 1
        assert live["t_live_val_acc"] == row["val_acc"]
        assert live["t_live_train_loss"] == row["train_loss"]
    with open(tmp_path / "dvclive/t/plots/metrics/t_live_val_acc.tsv") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    assert [float(r["t_live_val_acc"]) for r in rows] == [h["val_acc"] for h in history]


def test_epochs_count_across_fits_and_a_new_run_starts_clean(tiny_data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model = tiny_model(tiny_data)
    cfg = TrainConfig(epochs=1, max_batches=1)
    with live_progress("live", "p") as on_epoch:  # prune fine-tunes once per pruning step
        for _ in range(2):
            fit(model, tiny_data.train, tiny_data.val, cfg, log=lambda _: None, on_epoch=on_epoch)
    assert json.loads((tmp_path / "live/metrics.json").read_text())["p_live_epoch"] == 2

    with live_progress("live", "p") as on_epoch:
        assert not (tmp_path / "live/metrics.json").exists()  # the last run's progress is gone
        fit(model, tiny_data.train, tiny_data.val, cfg, log=lambda _: None, on_epoch=on_epoch)
    live = json.loads((tmp_path / "live/metrics.json").read_text())
    assert live["p_live_epoch"] == 1
    tsv = (tmp_path / "live/plots/metrics/p_live_epoch.tsv").read_text().splitlines()
    assert tsv == ["step\tp_live_epoch", "0\t1"]


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_the_previous_progress_stays_until_the_stage_commits(tmp_path, monkeypatch):
    """Training that fails, or a commit that fails, puts the last good run's live files back;
    a commit that adopts the directory keeps the new ones; no temporary or journal is left."""
    import pytest

    from shrinkflow.core.errors import ShrinkflowError
    from shrinkflow.core.outputs import commit_outputs
    from shrinkflow.training.live import live_progress

    monkeypatch.chdir(tmp_path)
    with live_progress("dvclive/t", "t") as on_epoch, commit_outputs() as out:
        on_epoch({"epoch": 1, "val_acc": 0.5})
        out.json("metrics/t.json", {"a": 1})
        out.adopt("dvclive/t")
    good = _files(tmp_path / "dvclive")
    assert json.loads((tmp_path / "dvclive/t/metrics.json").read_text())["t_live_val_acc"] == 0.5

    with pytest.raises(ShrinkflowError), live_progress("dvclive/t", "t") as on_epoch:
        on_epoch({"epoch": 1, "val_acc": 0.9})  # on disk while it runs...
        assert "0.9" in (tmp_path / "dvclive/t/metrics.json").read_text()
        raise ShrinkflowError("the loss is not finite")  # ...and gone when training fails
    assert _files(tmp_path / "dvclive") == good

    with pytest.raises(ShrinkflowError, match="no space left"):
        with live_progress("dvclive/t", "t") as on_epoch:
            on_epoch({"epoch": 1, "val_acc": 0.9})
        with commit_outputs() as out:
            out.adopt("dvclive/t")
            out.json("metrics/t.json", {"a": 2})
            raise OSError(errno.ENOSPC, "No space left on device")
    assert _files(tmp_path / "dvclive") == good
    assert sorted(p.name for p in (tmp_path / "dvclive").iterdir()) == ["t"]


def test_a_killed_run_gets_its_previous_progress_back(tmp_path, monkeypatch):
    """A run killed while training (here: a child that sets the files aside, writes a partial
    run and dies) is undone by the next run that opens live progress in that folder."""
    from shrinkflow.core.outputs import recover_folder, set_aside

    monkeypatch.chdir(tmp_path)
    (tmp_path / "dvclive/t").mkdir(parents=True)
    (tmp_path / "dvclive/t/metrics.json").write_text('{"good": 1}')
    pid = os.fork()
    if pid == 0:  # the run that gets killed
        set_aside("dvclive/t")
        (tmp_path / "dvclive/t").mkdir()
        (tmp_path / "dvclive/t/metrics.json").write_text('{"partial": 1}')
        os._exit(9)
    os.waitpid(pid, 0)
    assert (tmp_path / "dvclive/t/metrics.json").read_text() == '{"partial": 1}'
    recover_folder(tmp_path / "dvclive")
    assert (tmp_path / "dvclive/t/metrics.json").read_text() == '{"good": 1}'
    assert sorted(p.name for p in (tmp_path / "dvclive").iterdir()) == ["t"]
