"""The ``teacher`` section of params.yaml."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import (
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from shrinkflow.params.common import (
    ModelSpec,
    Section,
    Seed,
    TrainConfig,
)


class TeacherParams(Section):
    """``mode: train`` trains ``model`` (from ``init``'s weights when set); ``mode: import`` only
    loads ``init`` (a shrinkflow ``.pt`` or a state_dict for ``model.arch``), checks it against
    the data and evaluates it."""

    section: ClassVar[str] = "teacher"

    mode: Literal["train", "import"] = "train"
    init: str = Field(default="", description="weights file inside the repo (dvc add it)")
    model: ModelSpec = ModelSpec(widths=[96, 192, 384])
    train: TrainConfig = TrainConfig(epochs=10)
    ensemble_seeds: list[Seed] = Field(
        default=[], max_length=15,
        description="one extra ensemble member per seed (same model and recipe); [] = one teacher")

    @field_validator("init")
    @classmethod
    def _inside_repo(cls, init: str) -> str:
        # DVC tracks files in the repository only; an outside path would make the teacher
        # depend on a file no `dvc repro` can see change.
        if init and (Path(init).is_absolute() or ".." in Path(init).parts):
            raise ValueError("must be a relative path inside the repository, e.g. "
                             "data/raw/resnet18_imagenet.pt (dvc add it)")
        return init

    @model_validator(mode="after")
    def _import_needs_init(self) -> TeacherParams:
        if self.mode == "import" and not self.init:
            raise ValueError("mode 'import' needs teacher.init: the model file to import")
        return self

    @field_validator("ensemble_seeds")
    @classmethod
    def _members_differ(cls, seeds: list[int], info: ValidationInfo) -> list[int]:
        # fields are validated in order, so mode and train are known here (when valid)
        repeated = sorted({s for s in seeds if seeds.count(s) > 1})
        if repeated:  # the same member trained twice would weigh double in the mean
            raise ValueError(f"seeds must be distinct, {repeated} repeated")
        if seeds and info.data.get("mode") == "import":
            raise ValueError("needs teacher.mode 'train': an imported teacher has no seed to "
                             "vary (set ensemble_seeds: [])")
        train = info.data.get("train")
        if train is not None and train.seed in seeds:
            raise ValueError(f"must not contain teacher.train.seed ({train.seed}): that member "
                             "would be the teacher itself")
        return seeds
