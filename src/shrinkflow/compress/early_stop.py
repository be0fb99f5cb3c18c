"""Giving up on a ladder rung that cannot reach the teacher: the ladder's cost control.

A ladder rung (params ``ladder.rungs``) is only worth its training if it can end near the
teacher. After ``ladder.early_stop.after_epochs`` epochs, a rung whose validation accuracy,
projected to its last epoch, is still more than ``ladder.early_stop.points_behind`` points below
the teacher's validation accuracy stops; what it learned so far is still exported and measured,
so the ladder keeps an honest (weaker) point for it.

The projection errs on the side of training on, twice. It starts from the top of the 95 %
interval of the rung's best validation accuracy (``measure.noise``): on a validation split of a
few dozen images one image is several points, and a rung must not give up on noise. Measured on
the hymenoptera photos (37 validation images, one image is 2.7 points; one run each): projecting
from the best accuracy itself, the two rungs gave up at epochs 12 and 5 of 40 with 62.09 % and
51.63 % on test; trained to the end, as this rule lets them, they reached 62.09 % and 62.75 %:
one stop cost nothing, the other 11 points. And it extends that with a straight
line through the rung's gain per epoch over the second half of its epochs so far, while the
learning rate decays (cosine or step), so late gains shrink and the line overestimates where the
rung ends.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from shrinkflow.measure.noise import accuracy_estimate


def projected_accuracy(val_accs: Sequence[float], total_epochs: int, val_images: int) -> float:
    """Validation accuracy (fraction) at epoch ``total_epochs``, at most 1: the top of the 95 %
    interval of the best accuracy so far on ``val_images`` images, plus the mean gain per epoch
    over the second half of the epochs so far (never negative: a dip does not sink it) for each
    epoch to go."""
    done = len(val_accs)
    if done == 0:
        raise ValueError("no epoch to project from")
    half = done // 2
    gain = (val_accs[-1] - val_accs[half - 1]) / (done - half) if half else 0.0
    level = accuracy_estimate(max(val_accs), val_images).high
    return min(1.0, level + max(gain, 0.0) * (total_epochs - done))


def give_up_rule(
    target_acc: float, total_epochs: int, after_epochs: int, points_behind: float,
    val_images: int,
) -> Callable[[list[dict[str, Any]]], str | None]:
    """The check ``training.loop.fit`` runs after each epoch: a reason to stop, or None.

    ``target_acc`` is the teacher's validation accuracy (fraction) on the same ``val_images``;
    ``after_epochs`` 0 never stops. Checked from epoch ``after_epochs`` on, never at the last
    epoch (nothing to save)."""

    def check(history: list[dict[str, Any]]) -> str | None:
        done = len(history)
        if after_epochs == 0 or done < after_epochs or done >= total_epochs:
            return None
        projected = projected_accuracy([row["val_acc"] for row in history], total_epochs,
                                       val_images)
        behind = (target_acc - projected) * 100
        if behind <= points_behind:
            return None
        return (f"val accuracy projected to epoch {total_epochs} is at most {projected:.2%} "
                f"(top of its 95 % interval on {val_images} images, plus its recent gain), "
                f"{behind:.2f} points below the teacher's {target_acc:.2%} (give up beyond "
                f"{points_behind:g}: ladder.early_stop.points_behind)")

    return check
