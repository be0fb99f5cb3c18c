"""What the benchmark's parent and its workers both need: the job a worker runs, the thread
count rule and the CPU's name. Its own module so that ``benchmark`` (the parent, torch-free) and
``benchmark_worker`` (inside the worker) both import it and neither imports the other at module
level.
"""

from __future__ import annotations

import os
import platform
import re
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Job:
    """One model to benchmark, in plain data so it can be passed to a worker process as JSON."""

    name: str
    path: str
    input_shape: list[int]  # C, H, W
    batch_sizes: list[int]
    repeats: int = 50
    warmup: int = 10
    threads: int = 1
    device: str = "cpu"  # for fp32 PyTorch models; the others always run on the CPU
    seed: int = 0
    # a prepared detection folder: detectors are timed on its test images (benchmark_worker)
    scenes: str = ""


def resolve_threads(threads: int) -> int:
    """0 means every core this process may run on (affinity-aware, unlike os.cpu_count)."""
    if threads > 0:
        return threads
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def cpu_name() -> str:
    """The CPU model string, so a benchmark result says what it was measured on."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    match = re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
    return match.group(1).strip() if match else platform.machine()
