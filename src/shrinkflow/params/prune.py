"""The ``prune`` section of params.yaml."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    Field,
    PlainValidator,
    ValidationInfo,
    field_validator,
)
from pydantic_core import PydanticCustomError

from shrinkflow.params.common import (
    Fraction,
    KDSettings,
    Section,
    Seed,
    TrainConfig,
)


def _ratio_or_auto(value: Any) -> float | str:
    """A fraction in (0, 1) or ``auto``; one message for both (a union would give two)."""
    if value == "auto":
        return "auto"
    if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < 1:
        return float(value)
    raise PydanticCustomError("ratio_or_auto", "expected a fraction in (0, 1) or auto")


RatioOrAuto = Annotated[float | str, PlainValidator(_ratio_or_auto)]


class PruneParams(Section):
    """Pruning; ``train.epochs`` is the TOTAL fine-tune budget, split over ``iterative_steps``.

    ``ratio: auto`` is budget mode (``shrinkflow.compress.prune_budget``): per-layer widths from the
    sensitivity scan, pruned in ``iterative_steps`` steps until the validation drop against the
    unpruned student would exceed ``budget.max_drop_points`` (``shrinkflow.params.budget``).
    """

    section: ClassVar[str] = "prune"

    mode: Literal["structured", "unstructured"] = "structured"
    ratio: RatioOrAuto = 0.35
    target: Literal["macs", "latency"] = "macs"
    importance: Literal["l1", "l2", "taylor", "random"] = "l2"
    iterative_steps: int = Field(default=4, ge=1, le=100)
    round_to: int = Field(default=8, ge=1, le=1024,
                          description="keep channel counts multiples of this")
    ignore_layers: list[str] = []
    sensitivity: bool = True
    sensitivity_ratios: list[Fraction] = [0.25, 0.5, 0.75]
    sensitivity_max_layers: int = Field(default=16, ge=0, description="0 = scan every group")
    seed: Seed = 0
    kd: KDSettings = KDSettings(alpha=0.5)
    train: TrainConfig = TrainConfig(epochs=16, lr=0.02)

    @field_validator("ratio")
    @classmethod
    def _auto_is_structured(cls, ratio: float | str, info: ValidationInfo) -> float | str:
        if ratio == "auto" and info.data.get("mode") == "unstructured":
            raise ValueError("auto (budget mode) removes channels: it needs mode structured")
        return ratio

    @field_validator("sensitivity")
    @classmethod
    def _auto_needs_scan(cls, sensitivity: bool, info: ValidationInfo) -> bool:
        if not sensitivity and info.data.get("ratio") == "auto":
            raise ValueError("ratio auto plans per-layer widths from the scan: set it to true")
        return sensitivity
