"""The ladder's give-up rule (shrinkflow.compress.early_stop) and fit() stopping on it."""

import pytest
import torch

from shrinkflow.compress.early_stop import give_up_rule, projected_accuracy
from shrinkflow.measure.noise import accuracy_estimate
from shrinkflow.nets.zoo import build_model, make_spec
from shrinkflow.params.common import ModelSpec, TrainConfig
from shrinkflow.training.loop import fit


def rows(*val_accs: float) -> list[dict]:
    return [{"epoch": i + 1, "val_acc": v} for i, v in enumerate(val_accs)]


def test_projection_starts_from_the_top_of_the_best_accuracys_interval():
    top = accuracy_estimate(0.60, 10_000).high  # 10,000 images: a narrow interval
    # second half of 4 epochs: 0.50 -> 0.60 over 2 epochs = 0.05 per epoch; 6 epochs to go
    assert projected_accuracy([0.30, 0.50, 0.55, 0.60], 10, 10_000) == pytest.approx(top + 0.30)
    assert projected_accuracy([0.30, 0.50, 0.55, 0.60], 100, 10_000) == 1.0  # capped
    # a dip gives no negative gain: the best epoch stands
    assert projected_accuracy([0.70, 0.60], 10, 10_000) == pytest.approx(
        accuracy_estimate(0.70, 10_000).high)


def test_a_rung_far_behind_gives_up_and_a_climbing_one_does_not():
    rule = give_up_rule(target_acc=0.99, total_epochs=10, after_epochs=3, points_behind=5.0,
                        val_images=10_000)
    flat = rows(0.40, 0.41, 0.41)
    reason = rule(flat)
    assert reason and "ladder.early_stop.points_behind" in reason and "epoch 10" in reason
    # climbing 10 points an epoch: projected past the teacher, trains on
    assert rule(rows(0.50, 0.60, 0.70)) is None
    assert rule(flat[:2]) is None  # before after_epochs: no verdict


def test_on_a_small_validation_split_noise_is_no_reason_to_give_up():
    # the hymenoptera rung: stuck at 20-22 of 37 images for 12 epochs, teacher at 75.68 %;
    # 22/37 = 59.46 % is 16 points behind, but its interval reaches 74 %: it trains on
    accs = [22, 18, 18, 18, 19, 20, 19, 19, 19, 21, 20, 20]
    history = rows(*(a / 37 for a in accs))
    assert give_up_rule(0.7568, 40, 5, 5.0, val_images=37)(history) is None
    assert give_up_rule(0.7568, 40, 5, 5.0, val_images=100_000)(history)  # were it certain


def test_the_rule_is_off_at_zero_and_never_fires_at_the_last_epoch():
    assert give_up_rule(0.99, 10, 0, 5.0, 10_000)(rows(0.1, 0.1, 0.1)) is None
    assert give_up_rule(0.99, 3, 1, 5.0, 10_000)(rows(0.1, 0.1, 0.1)) is None  # nothing to save


def test_fit_stops_at_the_first_epoch_the_rule_names(tiny_data):
    meta = tiny_data.meta
    torch.manual_seed(0)
    model = build_model(make_spec(ModelSpec(widths=[4, 8]), meta["shape"][0],
                                  meta["num_classes"], meta["mean"], meta["std"]))
    lines: list[str] = []
    history = fit(model, tiny_data.train, tiny_data.val, TrainConfig(epochs=5), log=lines.append,
                  name="r", stop=lambda h: "hopeless" if len(h) == 2 else None)
    assert [h["epoch"] for h in history] == [1, 2]
    assert lines[-1] == "[r] stopped after epoch 2/5: hopeless"
