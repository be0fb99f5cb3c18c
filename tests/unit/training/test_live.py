"""Live progress: fit's on_epoch hook and the DVCLive files it keeps current while training."""

import csv
import json

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
