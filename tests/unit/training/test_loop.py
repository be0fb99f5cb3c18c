"""The training loop (shrinkflow.training.loop): it learns, repeats, stops at a non-finite loss
before the weights change, and checks the device and the student's input size."""

import pytest
import torch
from tiny_models import FULL, downsampled_spec

from shrinkflow.core.errors import ShrinkflowError
from shrinkflow.nets.zoo import build_model, make_spec
from shrinkflow.params.common import ModelSpec, TrainConfig
from shrinkflow.training.loop import (
    CrossEntropy,
    NonFiniteLossGuard,
    check_input_size,
    effective_input_size,
    fit,
    iterate_batches,
    predict,
    resolve_device,
    train_supervised,
)


def tiny_model(data, widths=(8, 16)):
    meta = data.meta
    spec = make_spec(ModelSpec(widths=list(widths)), meta["shape"][0], meta["num_classes"],
                     meta["mean"], meta["std"])
    return build_model(spec)


def test_one_training_step_reduces_loss(tiny_data):
    torch.manual_seed(0)
    model = tiny_model(tiny_data)
    xb, yb = next(iterate_batches(tiny_data.train, 64, torch.device("cpu")))
    loss_fn = CrossEntropy()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model.train()
    before, _ = loss_fn(model(xb), yb, xb)
    opt.zero_grad()
    before.backward()
    opt.step()
    after, _ = loss_fn(model(xb), yb, xb)
    assert after.item() < before.item()


def test_fit_learns_and_logs_every_epoch(tiny_data):
    torch.manual_seed(0)
    model = tiny_model(tiny_data)
    lines = []
    history = fit(model, tiny_data.train, tiny_data.val, TrainConfig(epochs=3, lr=0.05),
                  log=lines.append, name="t")
    assert [h["epoch"] for h in history] == [1, 2, 3] and len(lines) == 3
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert history[-1]["val_acc"] > 0.5  # 4 classes: chance is 0.25
    assert {"train_ce", "train_acc", "val_loss", "lr"} <= set(history[0])


def test_training_is_reproducible(tiny_data):
    cfg = TrainConfig(epochs=2, seed=5)
    runs = []
    for _ in range(2):
        model, _, history, metrics = train_supervised(ModelSpec(widths=[4, 8]), cfg, tiny_data, "m")
        runs.append((history, metrics.pop("m_train_seconds"), metrics,
                     predict(model, tiny_data.test[0])))
    assert runs[0][0] == runs[1][0] and runs[0][2] == runs[1][2]
    assert torch.equal(runs[0][3], runs[1][3])


def test_max_batches_caps_an_epoch(tiny_data):
    batches = list(iterate_batches(tiny_data.train, 16, torch.device("cpu"),
                                   torch.Generator().manual_seed(0), max_batches=3))
    assert len(batches) == 3 and batches[0][0].dtype == torch.float32
    assert 0.0 <= batches[0][0].min() and batches[0][0].max() <= 1.0


def test_loss_module_parameters_are_trained(tiny_data):
    class ScaledCE(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = torch.nn.Parameter(torch.ones(()))

        def forward(self, logits, targets, inputs):
            loss = torch.nn.functional.cross_entropy(logits * self.scale, targets)
            return loss, {"ce": loss.detach()}

    loss_fn = ScaledCE()
    fit(tiny_model(tiny_data), tiny_data.train, tiny_data.val,
        TrainConfig(epochs=1, max_batches=2), loss_fn=loss_fn, log=lambda s: None)
    assert loss_fn.scale.item() != 1.0


class NaNAtStep(CrossEntropy):
    """Cross-entropy that turns NaN from its ``bad``-th call on (counting from 1)."""

    def __init__(self, bad: int) -> None:
        super().__init__()
        self.calls, self.bad = 0, bad

    def forward(self, logits, targets, inputs):
        self.calls += 1
        loss, parts = super().forward(logits, targets, inputs)
        return (loss * float("nan") if self.calls >= self.bad else loss), parts


def test_a_nan_loss_stops_training_at_its_batch_before_the_weights_change(tiny_data):
    torch.manual_seed(0)
    model = tiny_model(tiny_data)
    # 256 train images / batch 64 = 4 batches per epoch: call 6 is epoch 2, batch 2
    loss_fn = NaNAtStep(bad=6)
    with pytest.raises(ShrinkflowError) as err:
        fit(model, tiny_data.train, tiny_data.val, TrainConfig(epochs=3, batch_size=64),
            loss_fn=loss_fn, log=lambda s: None, name="distill", params_key="distill.train",
            loss_params={"distill.T": 4.0, "distill.alpha": 0.5})
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("[distill] the training loss is not finite")
    assert "epoch 2, batch 2" in msg and "nothing was written" in msg
    assert "distill.train.lr = 0.05" in msg and "distill.T = 4.0, distill.alpha = 0.5" in msg
    assert loss_fn.calls == 6  # stopped at once (CPU checks every batch)
    assert all(torch.isfinite(p).all() for p in model.parameters())  # NaN never applied


def test_the_gpu_guard_reads_late_but_names_the_first_bad_batch():
    guard = NonFiniteLossGuard(torch.device("cpu"), steps_per_epoch=3, what="e{epoch} b{batch}")
    guard.every = 4  # as on a GPU: only every 4th step reads the device flag
    nan, ok = torch.tensor(float("nan")), torch.tensor(1.0)
    guard.update(ok, 0)
    guard.update(ok, 1)
    guard.update(nan, 2)  # the first bad one: epoch 1, batch 3
    with pytest.raises(ShrinkflowError, match="^e1 b3$"):
        guard.update(ok, 3)  # a finite loss later does not clear it


def test_cuda_without_a_gpu_names_the_key(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ShrinkflowError, match=r"^teacher\.train\.device = 'cuda': no CUDA GPU"):
        resolve_device("cuda", "teacher.train.device")
    assert resolve_device("auto").type == "cpu"


def test_input_size_larger_than_the_data_is_one_line():
    assert effective_input_size(downsampled_spec(8), list(FULL)) == "8x8"
    assert effective_input_size(downsampled_spec(0), list(FULL)) == "16x16"
    check_input_size(16, list(FULL), "distill.input_size")  # equal is fine
    with pytest.raises(ShrinkflowError, match=r"^distill.input_size = 20: larger than the "
                                              r"data's images \(16x16\)"):
        check_input_size(20, list(FULL), "distill.input_size")
