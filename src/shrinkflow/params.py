"""Schemas for every section of params.yaml, and one loader that validates a section.

Validation happens when a stage starts, before it reads data or touches an output, so a typo in
params.yaml costs a second and destroys nothing. Each error names the full key
(``teacher.train.epochs``) and what is allowed there.

What is rejected, and why:
- every float must be finite (``allow_inf_nan=False`` on every section): ``T: .inf`` trained a
  NaN student that replaced the good one;
- every count that must be positive is (epochs, batch sizes, calibration samples, repeats...),
  and values have an upper bound where larger ones mean nothing (``lr <= 10``, ``T <= 100``,
  ``epochs <= 10000``, batch sizes ``<= 65536``);
- ``device: cuda`` on a machine without a visible CUDA GPU;
- a key missing from params.yaml. The schema defaults equal the shipped params.yaml (a test
  compares them) and serve library callers and tests; a stage never falls back on them, because
  DVC tracks the file, not our defaults. The error names the key and the shipped value.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError, PydanticUndefined

from shrinkflow.errors import ShrinkflowError


class Section(BaseModel):
    """Base for every params section: unknown keys are errors, not silently ignored, and no
    float may be inf or NaN (a new section or key inherits both)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def _cuda_visible(device: str) -> str:
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


Device = Annotated[Literal["auto", "cpu", "cuda"], AfterValidator(_cuda_visible)]
Seed = Annotated[int, Field(ge=0, le=2**32 - 1)]  # numpy refuses negative seeds
Epochs = Annotated[int, Field(ge=1, le=10_000)]
BatchSize = Annotated[int, Field(ge=1, le=65_536)]
Fraction = Annotated[float, Field(gt=0, lt=1)]


class ModelSpec(Section):
    """Architecture choice; see ``shrinkflow.models`` for what each field means per arch."""

    arch: Literal["cnn", "resnet18", "mobilenet_v2"] = "cnn"
    widths: list[Annotated[int, Field(ge=1, le=4096)]] = Field(
        default=[32, 64, 128], min_length=1, max_length=16
    )
    depth: int = Field(default=2, ge=1, le=16)
    width_mult: float = Field(default=1.0, gt=0, le=8)


class TrainConfig(Section):
    """Hyper-parameters of the one training loop (``shrinkflow.train.fit``)."""

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
    augment: Literal["none", "crop", "crop_flip"] = "none"
    crop_padding: int = Field(default=4, ge=1, le=64, description="pixels of zero padding")
    nproc: int = Field(default=1, ge=1, le=1024, description="processes (GPUs) on this machine; "
                       "> 1 runs the stage under torchrun, batch_size split over them")

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
    image_size: int = Field(default=32, ge=4, le=1024)
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


class TeacherParams(Section):
    """``mode: train`` trains ``model`` (from ``init``'s weights when set); ``mode: import`` only
    loads ``init`` (a shrinkflow ``.pt`` or a state_dict for ``model.arch``), checks it against
    the data and evaluates it."""

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


class DistillParams(Section):
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


class KDSettings(Section):
    """Distillation from the teacher during a fine-tune; alpha 0 turns it off."""

    T: float = Field(default=4.0, gt=0, le=100)
    alpha: float = Field(default=0.9, ge=0, le=1)


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

    ``ratio: auto`` is budget mode (``shrinkflow.prune_budget``): per-layer widths from the
    sensitivity scan, pruned in ``iterative_steps`` steps until the validation drop against the
    unpruned student would exceed ``max_drop_points``.
    """

    mode: Literal["structured", "unstructured"] = "structured"
    ratio: RatioOrAuto = 0.35
    max_drop_points: float = Field(default=1.0, ge=0, le=100,
                                   description="ratio auto: budget vs the student, on val")
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

    input: Literal["pruned", "student"] = "pruned"
    mode: Literal["static", "dynamic", "qat"] = "static"
    calibration_samples: int = Field(default=256, ge=1, le=100_000)
    calibration_method: Literal["minmax", "entropy", "percentile"] = "minmax"
    per_channel: bool = True
    reduce_range: bool = True
    opset: int = Field(default=17, ge=13)
    seed: Seed = 0
    qat: QATParams = QATParams()


class EvaluateParams(Section):
    batch_size: BatchSize = 256
    ece_bins: int = Field(default=15, ge=1, le=1000)


class BenchmarkParams(Section):
    batch_sizes: list[BatchSize] = Field(default=[1, 64], min_length=1)
    repeats: int = Field(default=100, ge=1, le=1_000_000,
                         description="timed calls per model and batch size")
    rounds: int = Field(default=10, ge=1, le=10_000,
                        description="interleaved rounds spreading the calls")
    warmup: int = Field(default=10, ge=0, le=100_000)
    threads: int = Field(default=0, ge=0, le=1024, description="per model; 0 = all cores")
    device: Annotated[Literal["cpu", "cuda"], AfterValidator(_cuda_visible)] = "cpu"


class ReportParams(Section):
    max_drop_points: float = Field(default=1.0, ge=0, le=100)


class SelectParams(Section):
    """The final model: fastest at ``batch_size`` among candidates within the accuracy budget."""

    max_drop_points: float = Field(default=1.0, ge=0, le=100,
                                   description="accuracy budget, points below the teacher")
    batch_size: int = Field(default=0, ge=0, le=65_536,
                            description="latency at this benchmarked batch size; 0 = largest")
    max_file_bytes: int = Field(default=0, ge=0, description="0 = no size limit")
    exclude: list[str] = Field(default=["student_scratch"],
                               description="models of models.yaml that never ship")


SECTIONS: dict[str, type[Section]] = {
    "prepare": PrepareParams,
    "teacher": TeacherParams,
    "distill": DistillParams,
    "prune": PruneParams,
    "quantize": QuantizeParams,
    "evaluate": EvaluateParams,
    "benchmark": BenchmarkParams,
    "select": SelectParams,
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


def _describe(section: str, schema: type[BaseModel], err: dict[str, Any]) -> tuple[str, str]:
    """(full key, what is wrong) for one pydantic error; list items are named by index."""
    names = [str(p) for p in err["loc"] if not isinstance(p, int)]
    items = [str(p) for p in err["loc"] if isinstance(p, int)]
    key = ".".join([section, *names])
    if err["type"] == "extra_forbidden":
        parent: Any = schema
        for part in err["loc"][:-1]:
            field = parent.model_fields.get(str(part))
            parent = field.annotation if field is not None else None
            if parent is None:
                break
        allowed = ", ".join(parent.model_fields) if parent is not None else "?"
        return key, f"unknown key (allowed here: {allowed})"
    where = f"item {', '.join(items)}: " if items else ""
    return key, f"{where}{err['msg']} (got {err.get('input')!r})"


def _one_line_per_key(described: list[tuple[str, str]]) -> list[str]:
    """Join the problems of one key (e.g. two bad list items) into that key's one line."""
    by_key: dict[str, list[str]] = {}
    for key, problem in described:
        by_key.setdefault(key, []).append(problem)
    return [f"{key}: {'; '.join(problems)}" for key, problems in by_key.items()]


def missing_keys(prefix: str, value: Section, shipped: Section | None, source: str) -> list[str]:
    """One line per key of ``value``'s schema that the file did not set, naming the shipped value.

    ``shipped`` is the schema's default for this (sub)section, which a test keeps equal to the
    shipped params.yaml; a sub-section's shipped values come from its parent's default (e.g.
    ``prune.train.lr`` is 0.02 while ``teacher.train.lr`` is 0.05), not from its class.
    """
    lines = []
    for name, field in type(value).model_fields.items():
        key = f"{prefix}.{name}"
        default = getattr(shipped, name) if shipped is not None else field.get_default(
            call_default_factory=True)
        if name not in value.model_fields_set:
            if default is PydanticUndefined:  # a required key: pydantic has already said so
                continue
            if isinstance(default, BaseModel):
                default = default.model_dump()
            lines.append(f"{key}: missing from {source} (the shipped value is {default!r})")
            continue
        child = getattr(value, name)
        if isinstance(child, Section):
            same_kind = isinstance(default, type(child))
            lines += missing_keys(key, child, default if same_kind else None, source)
    return lines


def _params_error(lines: list[str]) -> ShrinkflowError:
    """One line for one problem (what a stage prints), one line per key for several."""
    if len(lines) == 1:
        return ShrinkflowError(f"invalid params: {lines[0]}")
    return ShrinkflowError("invalid params:\n  " + "\n  ".join(lines))


def validate_section(
    section: str, raw: Any, schema: type[S], source: str = "params.yaml"
) -> S:
    """Validate one section's raw mapping against its schema, with errors that name full keys.

    Every key must be present: a missing one is an error naming the shipped value, never a
    silent fallback on the schema default (DVC could not see the value that ran).
    """
    try:
        value = schema.model_validate(raw if raw is not None else {})
    except ValidationError as exc:
        described = [_describe(section, schema, e) for e in exc.errors()]
        raise _params_error(_one_line_per_key(described)) from None
    try:
        shipped = schema()
    except ValidationError:  # a schema with required keys has no shipped instance
        shipped = None
    lines = missing_keys(section, value, shipped, source)
    if lines:
        raise _params_error(lines)
    return value


def load_section(section: str, path: str | Path = "params.yaml") -> Section:
    """Load and validate ``section`` of params.yaml; raises ShrinkflowError naming the bad key."""
    if section not in SECTIONS:
        raise ShrinkflowError(f"unknown params section {section!r}; known: {', '.join(SECTIONS)}")
    data = read_yaml(path)
    if section not in data:
        raise ShrinkflowError(f"{path}: missing section {section!r}")
    return validate_section(section, data[section], SECTIONS[section], Path(path).name)
