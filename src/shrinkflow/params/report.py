"""The ``report`` section of params.yaml."""

from __future__ import annotations

from typing import ClassVar

from pydantic import (
    Field,
)

from shrinkflow.params.common import (
    Section,
)


class ReportParams(Section):
    section: ClassVar[str] = "report"

    max_drop_points: float = Field(default=1.0, ge=0, le=100)
