"""Giving up on a training run that cannot reach its target: the ladder's cost control.

A ladder rung (params ``ladder.rungs``) is only worth its training if it can end within the
accuracy budget. After ``ladder.early_stop.after_epochs`` epochs, a rung whose validation
accuracy, projected to its last epoch, is still more than ``ladder.early_stop.points_behind``
points below the teacher's validation accuracy stops; what it learned so far is still exported
and measured, so the ladder keeps an honest (weaker) point for it.

The projection is a straight line through the rung's gain per epoch over the second half of the
epochs so far. The learning rate decays (cosine or step), so late gains shrink: the line
overestimates where the rung ends, and the rule errs on the side of training on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any


def projected_accuracy(val_accs: Sequence[float], total_epochs: int) -> float:
    """Validation accuracy (fraction) at epoch ``total_epochs``, on the line through the best
    accuracy so far with the mean gain per epoch over the second half of the epochs so far
    (never a negative gain: a dip does not sink the projection). At most 1."""
    done = len(val_accs)
    if done == 0:
        raise ValueError("no epoch to project from")
    half = done // 2
    gain = (val_accs[-1] - val_accs[half - 1]) / (done - half) if half else 0.0
    return min(1.0, max(val_accs) + max(gain, 0.0) * (total_epochs - done))


def give_up_rule(
    target_acc: float, total_epochs: int, after_epochs: int, points_behind: float
) -> Callable[[list[dict[str, Any]]], str | None]:
    """The check ``training.loop.fit`` runs after each epoch: a reason to stop, or None.

    ``target_acc`` is the teacher's validation accuracy (fraction); ``after_epochs`` 0 never
    stops. Checked from epoch ``after_epochs`` on, never at the last epoch (nothing to save)."""

    def check(history: list[dict[str, Any]]) -> str | None:
        done = len(history)
        if after_epochs == 0 or done < after_epochs or done >= total_epochs:
            return None
        projected = projected_accuracy([row["val_acc"] for row in history], total_epochs)
        behind = (target_acc - projected) * 100
        if behind <= points_behind:
            return None
        return (f"val accuracy projected to epoch {total_epochs} is {projected:.2%}, "
                f"{behind:.2f} points below the teacher's {target_acc:.2%} (give up beyond "
                f"{points_behind:g}: ladder.early_stop.points_behind)")

    return check
