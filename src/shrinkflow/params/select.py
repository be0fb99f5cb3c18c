"""The ``select`` section of params.yaml."""

from __future__ import annotations

from typing import ClassVar

from pydantic import (
    Field,
)

from shrinkflow.params.common import (
    Section,
)


class SelectParams(Section):
    """The final model: fastest at ``batch_size`` among candidates within the accuracy budget
    (``budget.max_drop_points``)."""

    section: ClassVar[str] = "select"

    batch_size: int = Field(default=0, ge=0, le=65_536,
                            description="latency at this benchmarked batch size; 0 = largest")
    max_file_bytes: int = Field(default=0, ge=0, description="0 = no size limit")
    exclude: list[str] = Field(default=["student_scratch"],
                               description="models of models.yaml that never ship")
