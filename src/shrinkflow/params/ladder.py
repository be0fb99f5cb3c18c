"""The ``ladder`` section of params.yaml: candidate students besides ``distill.student``.

Each rung is ``distill.student`` with a few keys changed (a width list, a depth, a width
multiplier, an input size) and is distilled with distill's own recipe from the same teacher, as
its own DVC stage item (``distill_rung@NAME``): adding a rung trains only that rung, and a changed
rung retrains only itself. ``select_final`` then chooses across the whole ladder, so a run whose
guessed student is too small still ends with a model when a bigger rung meets the budget.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import AfterValidator, Field, StringConstraints, ValidationError

from shrinkflow.core.errors import ShrinkflowError
from shrinkflow.params.common import ModelSpec, Option, Section, known_arch

# a rung's name is part of a stage name, a file name and metric keys
RungName = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_]{0,31}$")]


class Rung(Section):
    """The keys of ``distill.student`` / ``distill.input_size`` this rung changes; the rest are
    inherited, so one line per rung says what differs. A rung that names an ``arch`` is another
    network: it inherits none of distill.student's keys (their meaning is per arch)."""

    arch: Annotated[str, AfterValidator(known_arch)] | None = None
    options: dict[str, Option] | None = Field(default=None, max_length=32)
    widths: list[Annotated[int, Field(ge=1, le=4096)]] | None = Field(
        default=None, min_length=1, max_length=16)
    depth: int | None = Field(default=None, ge=1, le=16)
    width_mult: float | None = Field(default=None, gt=0, le=8)
    input_size: int | None = Field(default=None, ge=0, le=4096)


class EarlyStop(Section):
    """When a rung gives up (``compress.early_stop``): after ``after_epochs`` epochs (0: never),
    once its projected validation accuracy trails the teacher's by more than ``points_behind``."""

    after_epochs: int = Field(default=0, ge=0, le=100_000)
    points_behind: float = Field(default=5.0, gt=0, le=100)


class LadderParams(Section):
    section: ClassVar[str] = "ladder"

    rungs: dict[RungName, Rung] = Field(default={}, max_length=16)
    early_stop: EarlyStop = EarlyStop()
    # the control that shows what distillation bought (rung_scratch@NAME): for the rung that
    # ships, or for every rung (each costs about one more rung's training)
    scratch: Literal["shipped", "every"] = "shipped"


def rung_student(name: str, base: ModelSpec, base_input_size: int, rung: Rung
                  ) -> tuple[ModelSpec, int]:
    """Rung ``name``'s model spec and input size: ``distill.student`` with the rung's keys
    changed, validated again as distill.student is. A width_mult on an arch that ignores it
    would make the rung a silent copy of distill.student, so it is refused."""
    where = f"ladder.rungs.{name}"
    arch = rung.arch or base.arch
    if rung.width_mult is not None and arch != "mobilenet_v2":
        raise ShrinkflowError(f"{where}.width_mult: applies to mobilenet_v2 only (the rung's "
                              f"arch is {arch}); give widths, or options for torchvision nets")
    changes = rung.model_dump(exclude_none=True, exclude={"input_size"})
    inherited = {} if rung.arch else base.model_dump()
    try:
        spec = ModelSpec.model_validate({**inherited, **changes})
    except ValidationError as exc:
        raise ShrinkflowError(f"{where}: {exc.errors()[0]['msg']}") from None
    return spec, base_input_size if rung.input_size is None else rung.input_size
