"""The ``evaluate`` section of params.yaml."""

from __future__ import annotations

from typing import ClassVar

from pydantic import (
    Field,
)

from shrinkflow.params.common import (
    BatchSize,
    Section,
)


class EvaluateParams(Section):
    section: ClassVar[str] = "evaluate"

    batch_size: BatchSize = 256
    ece_bins: int = Field(default=15, ge=1, le=1000)
