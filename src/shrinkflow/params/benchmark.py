"""The ``benchmark`` section of params.yaml."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import (
    AfterValidator,
    Field,
)

from shrinkflow.params.common import (
    BatchSize,
    Section,
    cuda_visible,
)


class BenchmarkParams(Section):
    section: ClassVar[str] = "benchmark"

    batch_sizes: list[BatchSize] = Field(default=[1, 64], min_length=1)
    repeats: int = Field(default=100, ge=1, le=1_000_000,
                         description="timed calls per model and batch size")
    rounds: int = Field(default=10, ge=1, le=10_000,
                        description="interleaved rounds spreading the calls")
    warmup: int = Field(default=10, ge=0, le=100_000)
    threads: int = Field(default=0, ge=0, le=1024, description="per model; 0 = all cores")
    device: Annotated[Literal["cpu", "cuda"], AfterValidator(cuda_visible)] = "cpu"
