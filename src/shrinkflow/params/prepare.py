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


# The sources of each task: a detection source's annotations hold boxes, a classification
# source's one label per image.
TASK_SOURCES = {"classification": ("digits", "idx", "imagefolder", "cifar"),
                "detection": ("scenes", "coco", "voc")}


class ScenesParams(Section):
    """The built-in detection set (``source: scenes``): scenes of digits on a blank canvas of
    ``image_size`` pixels (data.digit_scenes), as many per split as asked. Test scenes are made
    of digits no training scene uses."""

    train: int = Field(default=800, ge=1, le=1_000_000)
    val: int = Field(default=100, ge=1, le=1_000_000)
    test: int = Field(default=100, ge=1, le=1_000_000)
    max_digits: int = Field(default=4, ge=1, le=64)
    digit_scale: int = Field(default=2, ge=1, le=16, description="whole-number upscale of each "
                             "digit (the built-in 8 px digits at 2 are 16 px)")


class PrepareParams(Section):
    section: ClassVar[str] = "prepare"

    # the one place that names the task: later stages read it from the prepared data's meta.json
    task: Literal["classification", "detection"] = "classification"
    source: Literal["digits", "idx", "imagefolder", "cifar", "scenes", "coco", "voc"] = "digits"
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
    scenes: ScenesParams = ScenesParams()

    @model_validator(mode="after")
    def _source_fits_the_task(self) -> PrepareParams:
        if self.source not in TASK_SOURCES[self.task]:
            raise ValueError(f"source {self.source!r} is not a {self.task} source; expected one "
                             f"of {', '.join(TASK_SOURCES[self.task])} (prepare.task = "
                             f"{self.task!r})")
        if self.task == "detection" and self.resize != "squash":
            raise ValueError(f"resize {self.resize!r}: detection prepares with squash only (its "
                             "boxes scale with the image; crop would cut them)")
        return self

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
