"""Schemas for every section of params.yaml, and one loader that validates a section.

Validation happens when a stage starts, before it reads data or touches an output, so a typo in
params.yaml costs a second and destroys nothing. Each error names the full key
(``teacher.train.epochs``) and what is allowed there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from shrinkflow.errors import ShrinkflowError


class Section(BaseModel):
    """Base for every params section: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


Device = Literal["auto", "cpu", "cuda"]


class ModelSpec(Section):
    """Architecture choice; see ``shrinkflow.models`` for what each field means per arch."""

    arch: Literal["cnn", "resnet18", "mobilenet_v2"] = "cnn"
    widths: list[int] = Field(default=[32, 64, 128], min_length=1)
    depth: int = Field(default=2, ge=1)
    width_mult: float = Field(default=1.0, gt=0)

    @model_validator(mode="after")
    def _positive_widths(self) -> ModelSpec:
        if any(w < 1 for w in self.widths):
            raise ValueError(f"widths must all be >= 1, got {self.widths}")
        return self


class TrainConfig(Section):
    """Hyper-parameters of the one training loop (``shrinkflow.train.fit``)."""

    epochs: int = Field(default=10, ge=0)
    batch_size: int = Field(default=64, ge=1)
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(default=0.05, gt=0)
    momentum: float = Field(default=0.9, ge=0, lt=1)
    weight_decay: float = Field(default=5e-4, ge=0)
    schedule: Literal["cosine", "step", "constant"] = "cosine"
    label_smoothing: float = Field(default=0.0, ge=0, lt=1)
    seed: int = 0
    device: Device = "auto"
    max_batches: int = Field(default=0, ge=0, description="cap batches per epoch; 0 = no cap")
    augment: Literal["none", "crop", "crop_flip"] = "none"
    crop_padding: int = Field(default=4, ge=1, le=64, description="pixels of zero padding")
    nproc: int = Field(default=1, ge=1, description="processes (GPUs) on this machine; > 1 runs "
                       "the stage under torchrun, batch_size split over them")

    @model_validator(mode="after")
    def _batch_splits_over_processes(self) -> TrainConfig:
        if self.batch_size % self.nproc:
            raise ValueError(f"batch_size {self.batch_size} must be divisible by nproc "
                             f"{self.nproc}: the batch is split over the processes")
        return self


class PrepareParams(Section):
    source: Literal["digits", "idx", "imagefolder", "cifar"] = "digits"
    path: str = ""
    split: Literal["source", "pooled"] = "pooled"
    image_size: int = Field(default=32, ge=4)
    channels: Literal[1, 3] = 3
    val_fraction: float = Field(default=0.15, gt=0, lt=1)
    test_fraction: float = Field(default=0.15, gt=0, lt=1)
    seed: int = 0

    @model_validator(mode="after")
    def _fractions_leave_training_data(self) -> PrepareParams:
        if self.val_fraction + self.test_fraction >= 0.9:
            raise ValueError(
                f"val_fraction + test_fraction must be < 0.9 to leave training data, got "
                f"{self.val_fraction} + {self.test_fraction}"
            )
        return self


class TeacherParams(Section):
    """``mode: train`` trains ``model`` (from ``init``'s weights when set); ``mode: import`` only
    loads ``init`` (a shrinkflow ``.pt`` or a state_dict for ``model.arch``), checks it against
    the data and evaluates it."""

    mode: Literal["train", "import"] = "train"
    init: str = Field(default="", description="weights file inside the repo (dvc add it)")
    model: ModelSpec = ModelSpec()
    train: TrainConfig = TrainConfig()

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


class DistillParams(Section):
    student: ModelSpec = ModelSpec(widths=[32, 64, 128])
    train: TrainConfig = TrainConfig()
    method: Literal["kd", "hint", "attention"] = "kd"
    T: float = Field(default=4.0, gt=0)
    alpha: float = Field(default=0.9, ge=0, le=1)
    feature_weight: float = Field(default=1.0, ge=0)
    teacher_layer: str = ""
    student_layer: str = ""


class KDSettings(Section):
    """Distillation from the teacher during a fine-tune; alpha 0 turns it off."""

    T: float = Field(default=4.0, gt=0)
    alpha: float = Field(default=0.9, ge=0, le=1)


class PruneParams(Section):
    """Pruning; ``train.epochs`` is the TOTAL fine-tune budget, split over ``iterative_steps``."""

    mode: Literal["structured", "unstructured"] = "structured"
    ratio: float = Field(default=0.5, gt=0, lt=1)
    importance: Literal["l1", "l2", "taylor", "random"] = "l2"
    iterative_steps: int = Field(default=1, ge=1)
    round_to: int = Field(default=8, ge=1, description="keep channel counts multiples of this")
    ignore_layers: list[str] = []
    sensitivity: bool = True
    sensitivity_ratios: list[float] = [0.25, 0.5, 0.75]
    sensitivity_max_layers: int = Field(default=16, ge=0, description="0 = scan every group")
    seed: int = 0
    kd: KDSettings = KDSettings()
    train: TrainConfig = TrainConfig()

    @model_validator(mode="after")
    def _ratios_are_fractions(self) -> PruneParams:
        if any(not 0 < r < 1 for r in self.sensitivity_ratios):
            raise ValueError(
                f"sensitivity_ratios must all be in (0, 1), got {self.sensitivity_ratios}"
            )
        return self


class QuantizeParams(Section):
    input: Literal["pruned", "student"] = "pruned"
    mode: Literal["static", "dynamic"] = "static"
    calibration_samples: int = Field(default=256, ge=1)
    calibration_method: Literal["minmax", "entropy", "percentile"] = "minmax"
    per_channel: bool = True
    reduce_range: bool = True
    opset: int = Field(default=17, ge=13)
    seed: int = 0


class EvaluateParams(Section):
    batch_size: int = Field(default=256, ge=1)
    ece_bins: int = Field(default=15, ge=1)


class BenchmarkParams(Section):
    batch_sizes: list[int] = Field(default=[1, 64], min_length=1)
    repeats: int = Field(default=200, ge=1, description="timed calls per model and batch size")
    rounds: int = Field(default=20, ge=1, description="interleaved rounds spreading the calls")
    warmup: int = Field(default=10, ge=0)
    threads: int = Field(default=0, ge=0, description="per model; 0 = all cores")
    device: Literal["cpu", "cuda"] = "cpu"


class ReportParams(Section):
    max_drop_points: float = Field(default=1.0, ge=0)


SECTIONS: dict[str, type[Section]] = {
    "prepare": PrepareParams,
    "teacher": TeacherParams,
    "distill": DistillParams,
    "prune": PruneParams,
    "quantize": QuantizeParams,
    "evaluate": EvaluateParams,
    "benchmark": BenchmarkParams,
    "report": ReportParams,
}

S = TypeVar("S", bound=Section)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read params.yaml with yaml.safe_load (dvc.api costs ~1 s per stage here)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ShrinkflowError(f"{path}: cannot read params file ({exc.strerror})") from exc
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ShrinkflowError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ShrinkflowError(f"{path}: expected a mapping of sections, got {type(data).__name__}")
    return data


def _describe(section: str, schema: type[BaseModel], err: dict[str, Any]) -> str:
    key = ".".join([section, *(str(p) for p in err["loc"])])
    if err["type"] == "extra_forbidden":
        parent: Any = schema
        for part in err["loc"][:-1]:
            field = parent.model_fields.get(str(part))
            parent = field.annotation if field is not None else None
            if parent is None:
                break
        allowed = ", ".join(parent.model_fields) if parent is not None else "?"
        return f"{key}: unknown key (allowed here: {allowed})"
    return f"{key}: {err['msg']} (got {err.get('input')!r})"


def validate_section(section: str, raw: Any, schema: type[S]) -> S:
    """Validate one section's raw mapping against its schema, with errors that name full keys."""
    try:
        return schema.model_validate(raw if raw is not None else {})
    except ValidationError as exc:
        lines = [_describe(section, schema, e) for e in exc.errors()]
        raise ShrinkflowError("invalid params:\n  " + "\n  ".join(lines)) from None


def load_section(section: str, path: str | Path = "params.yaml") -> Section:
    """Load and validate ``section`` of params.yaml; raises ShrinkflowError naming the bad key."""
    if section not in SECTIONS:
        raise ShrinkflowError(f"unknown params section {section!r}; known: {', '.join(SECTIONS)}")
    data = read_yaml(path)
    if section not in data:
        raise ShrinkflowError(f"{path}: missing section {section!r}")
    return validate_section(section, data[section], SECTIONS[section])
