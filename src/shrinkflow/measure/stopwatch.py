"""The one stopwatch: milliseconds of single calls, shared by the benchmark's workers and the
pruning latency table (``prune_budget``), which must not import the benchmark's scheduler."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def time_calls(
    fn: Callable[[], Any], warmup: int, repeats: int, sync: Callable[[], None] | None = None
) -> list[float]:
    """Milliseconds of ``repeats`` calls of ``fn`` after ``warmup`` untimed ones.

    ``sync`` (``torch.cuda.synchronize`` on GPU) runs before starting and before stopping each
    clock, so asynchronous kernels are counted in the call that launched them.
    """
    sync = sync or (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - start) * 1000.0)
    return times
