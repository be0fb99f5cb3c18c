"""The ``prepare`` section of params.yaml."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import (
    Field,
    field_validator,
    model_validator,
)

from shrinkflow.params.common import (
    Fraction,
    Section,
    Seed,
)

# prepare.path is a dep of the prepare stage (dvc.yaml: ${prepare.path}), and DVC refuses an
# empty dep ("unexpected error", DVC 3.67): the built-in digits point at this tracked note.
DIGITS_PLACEHOLDER = "data/builtin-digits.txt"


class PrepareParams(Section):
    section: ClassVar[str] = "prepare"

    source: Literal["digits", "idx", "imagefolder", "cifar"] = "digits"
    path: str = DIGITS_PLACEHOLDER
    # auto: the source's own test split when it has one (source), else pooled (the digits)
    split: Literal["auto", "source", "pooled"] = "auto"
    image_size: int = Field(default=32, ge=4, le=1024)
    resize: Literal["squash", "crop", "letterbox"] = Field(
        default="squash", description="imagefolder only: squash to a square, centre crop after "
        "resizing the shorter side, or letterbox (data.images)")
    channels: Literal[1, 3] = 3
    val_fraction: Fraction = 0.15
    test_fraction: Fraction = 0.15
    seed: Seed = 0

    @field_validator("path")
    @classmethod
    def _path_names_a_dep(cls, value: str) -> str:
        if not value.strip():
            raise ValueError(f"must name the data folder under data/raw/ ({DIGITS_PLACEHOLDER} "
                             "for the built-in digits): it is the prepare stage's dep")
        return value

    @model_validator(mode="after")
    def _fractions_leave_training_data(self) -> PrepareParams:
        if self.val_fraction + self.test_fraction >= 0.9:
            raise ValueError(
                f"val_fraction + test_fraction must be < 0.9 to leave training data, got "
                f"{self.val_fraction} + {self.test_fraction}"
            )
        return self
