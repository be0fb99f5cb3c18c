import torch

from shrinkflow.models import build_model, make_spec
from shrinkflow.params import ModelSpec, TrainConfig
from shrinkflow.train import CrossEntropy, fit, iterate_batches, predict, train_supervised


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
