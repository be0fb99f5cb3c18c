"""What every params section is built from: the strict ``Section`` base, the shared field types,
and the sub-sections several sections embed (a model, a training recipe, KD settings).

A section's own schema lives in its own module (``params/<section>.py``), so editing one section's
schema reruns only the stages that read that section.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError


class Section(BaseModel):
    """Base for every params section: unknown keys are errors, not silently ignored, and no
    float may be inf or NaN (a new section or key inherits both)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def cuda_visible(device: str) -> str:
    """Refuse ``cuda`` when no GPU is visible, at load time, so the error names the key.

    torch is imported here, only when ``cuda`` is asked for: every stage reads its params through
    this module, and the stages that train nothing (select, report) then start without torch
    (measured: its import was 1.8-2.3 s of their 3.5-4 s)."""
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise PydanticCustomError(
                "no_cuda", "no CUDA GPU is visible (torch.cuda.is_available() is False)"
            )
    return device


Device = Annotated[Literal["auto", "cpu", "cuda"], AfterValidator(cuda_visible)]


Seed = Annotated[int, Field(ge=0, le=2**32 - 1)]  # numpy refuses negative seeds


Epochs = Annotated[int, Field(ge=1, le=10_000)]


BatchSize = Annotated[int, Field(ge=1, le=65_536)]


Fraction = Annotated[float, Field(gt=0, lt=1)]


def known_arch(arch: str) -> str:
    """``cnn``, ``factory`` or a torchvision classifier name; an unknown one is refused with
    its close matches. torchvision (~2.5 s) is imported only for names other than the zoo's
    original three, so the default pipeline's stages start as fast as before."""
    if arch not in ("cnn", "factory", "resnet18", "mobilenet_v2"):
        from shrinkflow.nets.torchvision_nets import check_arch

        try:
            check_arch(arch, ("cnn", "factory"))
        except ValueError as exc:
            raise PydanticCustomError("unknown_arch", str(exc)) from None
    return arch


Option = int | float | bool | str | list[int] | list[float]


class ModelSpec(Section):
    """Architecture choice; see ``shrinkflow.nets.zoo`` for what each field means per arch."""

    arch: Annotated[str, AfterValidator(known_arch)] = "cnn"
    options: dict[str, Option] = Field(
        default={}, max_length=32,
        description="keyword arguments of the torchvision constructor or of your factory")
    factory: str = Field(default="", description="arch factory: 'user_nets.<module>:<function>'")
    stem: Literal["auto", "small", "standard"] = Field(
        default="auto", description="torchvision nets: auto = small-image stem below 96 px")
    widths: list[Annotated[int, Field(ge=1, le=4096)]] = Field(
        default=[32, 64, 128], min_length=1, max_length=16
    )
    depth: int = Field(default=2, ge=1, le=16)
    width_mult: float = Field(default=1.0, gt=0, le=8)
    detector: Literal["fcos", "retinanet"] = Field(
        default="fcos", description="prepare.task detection: the detector around this network")

    @model_validator(mode="after")
    def _fields_fit_arch(self) -> ModelSpec:
        if (self.arch == "factory") != bool(self.factory):
            raise ValueError("arch 'factory' and a factory path go together: set arch: factory "
                             "and factory: 'user_nets.<module>:<function>'")
        if self.factory:
            from shrinkflow.nets.factory import check_factory_path

            check_factory_path(self.factory)
        # the original zoo ignored width_mult for cnn / resnet18: old params files still load
        if self.width_mult != 1.0 and self.arch not in ("cnn", "resnet18", "mobilenet_v2"):
            raise ValueError(f"width_mult applies to mobilenet_v2 only; give {self.arch}'s own "
                             "constructor arguments in options, e.g. {width_mult: 0.5}")
        if self.options and self.arch == "cnn":
            raise ValueError("options apply to torchvision archs and factories; the cnn takes "
                             "widths and depth")
        return self


class TrainConfig(Section):
    """Hyper-parameters of the one training loop (``shrinkflow.training.loop.fit``)."""

    epochs: Epochs = 10
    batch_size: BatchSize = 64
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(default=0.05, gt=0, le=10)
    momentum: float = Field(default=0.9, ge=0, lt=1)
    weight_decay: float = Field(default=5e-4, ge=0, le=1)
    schedule: Literal["cosine", "step", "constant"] = "cosine"
    label_smoothing: float = Field(default=0.0, ge=0, lt=1)
    seed: Seed = 0
    device: Device = "auto"
    max_batches: int = Field(default=0, ge=0, description="cap batches per epoch; 0 = no cap")
    augment: Literal["none", "crop", "crop_flip", "resized_crop_flip"] = "none"
    crop_padding: int = Field(default=4, ge=1, le=64, description="pixels of zero padding")
    nproc: int = Field(default=1, ge=1, le=1024, description="processes (GPUs) on this machine; "
                       "> 1 runs the stage under torchrun, batch_size split over them")

    @model_validator(mode="after")
    def _batch_splits_over_processes(self) -> TrainConfig:
        if self.batch_size % self.nproc:
            raise ValueError(f"batch_size {self.batch_size} must be divisible by nproc "
                             f"{self.nproc}: the batch is split over the processes")
        return self


class KDSettings(Section):
    """Distillation from the teacher during a fine-tune; alpha 0 turns it off."""

    T: float = Field(default=4.0, gt=0, le=100)
    alpha: float = Field(default=0.9, ge=0, le=1)
