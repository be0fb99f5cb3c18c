"""The ``quantize`` section of params.yaml."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import (
    Field,
    field_validator,
)

from shrinkflow.params.common import (
    KDSettings,
    Section,
    Seed,
    TrainConfig,
)


class QATParams(Section):
    """``quantize.mode: qat``: a fake-quantized fine-tune of the input model with distillation
    from the teacher, in the one training loop. One process only: the stage does not launch
    torchrun (a short fine-tune of a small model does not need it)."""

    kd: KDSettings = KDSettings()
    train: TrainConfig = TrainConfig(epochs=1, batch_size=128, lr=0.005)

    @field_validator("train")
    @classmethod
    def _one_process(cls, train: TrainConfig) -> TrainConfig:
        if train.nproc != 1:
            raise ValueError(f"nproc must be 1: QAT fine-tunes in one process (got {train.nproc})")
        return train


class QuantizeParams(Section):
    """Which model becomes int8, and how: ``static`` (calibrated PTQ), ``dynamic`` (weights
    only) or ``qat`` (fake-quantized fine-tune with KD, then int8; settings in ``qat``)."""

    section: ClassVar[str] = "quantize"

    input: Literal["pruned", "student"] = "pruned"
    mode: Literal["static", "dynamic", "qat"] = "static"
    calibration_samples: int = Field(default=256, ge=1, le=100_000)
    calibration_method: Literal["minmax", "entropy", "percentile"] = "minmax"
    per_channel: bool = True
    reduce_range: bool = True
    opset: int = Field(default=17, ge=13)
    seed: Seed = 0
    qat: QATParams = QATParams()
