"""The ``distill`` section of params.yaml."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import (
    Field,
)

from shrinkflow.params.common import (
    ModelSpec,
    Section,
    TrainConfig,
)


class DistillParams(Section):
    section: ClassVar[str] = "distill"

    student: ModelSpec = ModelSpec(widths=[32, 64, 128])
    input_size: int = Field(default=0, ge=0, le=4096,
                            description="student input side after downsampling; 0 = the data's")
    train: TrainConfig = TrainConfig(epochs=15)
    method: Literal["kd", "hint", "attention"] = "kd"
    T: float = Field(default=4.0, gt=0, le=100)
    alpha: float = Field(default=0.5, ge=0, le=1)
    feature_weight: float = Field(default=1.0, ge=0, le=1000)
    teacher_layer: str = ""
    student_layer: str = ""
