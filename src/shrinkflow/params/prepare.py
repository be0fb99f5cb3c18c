"""The ``prepare`` section of params.yaml."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import (
    Field,
    model_validator,
)

from shrinkflow.params.common import (
    Fraction,
    Section,
    Seed,
)


class PrepareParams(Section):
    section: ClassVar[str] = "prepare"

    source: Literal["digits", "idx", "imagefolder", "cifar"] = "digits"
    path: str = ""
    split: Literal["source", "pooled"] = "pooled"
    image_size: int = Field(default=32, ge=4, le=1024)
    resize: Literal["squash", "crop", "letterbox"] = Field(
        default="squash", description="imagefolder only: squash to a square, centre crop after "
        "resizing the shorter side, or letterbox (data.images)")
    channels: Literal[1, 3] = 3
    val_fraction: Fraction = 0.15
    test_fraction: Fraction = 0.15
    seed: Seed = 0

    @model_validator(mode="after")
    def _fractions_leave_training_data(self) -> PrepareParams:
        if self.val_fraction + self.test_fraction >= 0.9:
            raise ValueError(
                f"val_fraction + test_fraction must be < 0.9 to leave training data, got "
                f"{self.val_fraction} + {self.test_fraction}"
            )
        return self
