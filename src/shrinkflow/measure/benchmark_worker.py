"""Inside one benchmark worker process: one model, loaded and warmed up, timing calls on request.

``shrinkflow.measure.benchmark`` (the parent: scheduling, statistics, ratios) starts one worker per
model
and never imports this module itself, so the benchmark stage starts without torch; the workers
are forked from a server that has already imported it (``measure.benchmark._WORKER_PRELOAD``).

Memory: during warm-up of each batch size the worker resets the kernel's peak-RSS counter (writing
``5`` to ``/proc/self/clear_refs`` resets ``VmHWM``, Linux >= 4.0) and reports ``VmHWM - VmRSS``
afterwards: the extra resident memory inference needed beyond the loaded model and its input.
Where that reset is not available, it falls back to ``getrusage`` max-RSS growth, which misses
memory that was already at its peak before the run (the ``rss_method`` field says which).

Each worker opens its file with ``model_files.open.open_model``, which decides the runtime
(``torch``, ``torch_int8`` or ``onnxruntime``) from the file, exactly as evaluate does; the timed
call is ``timed_call``'s, the one place the two tasks differ:

* a classifier: the model's bare ``run`` on a batch already converted by its ``prepare``;
* a detector (``Model.detect``; prepare.task: detection): images in, final boxes out, with the
  post-processing (box decoding, score threshold, NMS) inside the timing. Batch B is the first B
  test images (``Job.scenes``; random pixels would leave the NMS nothing to do): a fp32 PyTorch
  detector takes them as one list (one batched call); an ONNX detector file takes one
  (1, C, S, S) image per call (export_detector puts NMS inside, per image), and so does any
  other detector runtime (``detect``), so its batch B is B calls in a row. Each row's
  ``calls_per_batch`` says which (1 or B; detection rows only). Images/s counts images either
  way.

int8 and ONNX Runtime always run on the CPU.
"""

from __future__ import annotations

import re
import resource
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import onnxruntime
import torch

from shrinkflow.core.errors import ShrinkflowError
from shrinkflow.data.prepared_boxes import BoxSplit, load_box_split
from shrinkflow.measure.benchmark_job import Job, cpu_name, resolve_threads
from shrinkflow.measure.stopwatch import time_calls
from shrinkflow.model_files.open import Model, Runtime, open_model

# --- memory ---------------------------------------------------------------------------------


def _proc_status_kb(key: str) -> int:
    match = re.search(rf"^{key}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.MULTILINE)
    if not match:
        raise OSError(f"{key} not in /proc/self/status")
    return int(match.group(1))


class PeakRss:
    """Extra peak resident memory (MB) of the code run between ``start()`` and ``stop()``."""

    def __init__(self) -> None:
        self.method = "vmhwm_reset"
        self._base_kb = 0

    def start(self) -> None:
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self._base_kb = _proc_status_kb("VmRSS")
        except OSError:
            self.method = "maxrss_growth"
            self._base_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    def stop(self) -> float:
        if self.method == "vmhwm_reset":
            peak_kb = _proc_status_kb("VmHWM")
        else:
            peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return round(max(peak_kb - self._base_kb, 0) / 1024.0, 3)


# --- one model, loaded and ready to time -------------------------------------------------------


def make_input(shape: list[int], batch_size: int, seed: int) -> torch.Tensor:
    """A seeded random uint8 image batch (N, C, H, W); the model's ``prepare`` scales it."""
    generator = torch.Generator().manual_seed(seed + batch_size)
    return torch.randint(0, 256, (batch_size, *shape), generator=generator, dtype=torch.uint8)


def scene_batch(test: BoxSplit, batch_size: int) -> torch.Tensor:
    """The first ``batch_size`` images of a prepared detection test split (cycled when it has
    fewer), uint8 (N, C, H, W). A detector's post-processing works on the boxes its input gives:
    on random pixels a trained detector scores few or none, and the NMS would be timed on
    nothing."""
    return torch.from_numpy(np.stack([test.images[i % len(test)] for i in range(batch_size)]))


class TimedCall(NamedTuple):
    """What the benchmark times for one batch: ``call()``, on ``inputs`` converted beforehand
    (outside the timing), making ``model_calls`` calls of the model."""

    call: Callable[[], Any]
    inputs: Any  # the runtime's own batch, or a detector's list of images
    model_calls: int


def timed_call(model: Model, x: torch.Tensor) -> TimedCall:
    """The call the benchmark times for ``model`` on the uint8 batch ``x`` (N, C, H, W), with
    every conversion done here, once, outside the timing.

    A classifier: ``run`` on ``prepare(x)``, one call. A detector: final boxes of the N
    images, post-processing included (module docstring): one list call for a fp32 PyTorch
    detector, N single-image ``detect`` calls for any other runtime (ONNX detector files)."""
    batch = model.prepare(x)
    if model.detect is None:
        run = model.run
        return TimedCall(lambda: run(batch), batch, 1)
    if model.runtime is Runtime.TORCH:  # torchvision's detectors: a list of (C, H, W) images
        images, run = list(batch), model.run
        return TimedCall(lambda: run(images), images, 1)
    arrays = batch if isinstance(batch, np.ndarray) else batch.cpu().numpy()
    singles, detect = [np.ascontiguousarray(a) for a in arrays], model.detect
    return TimedCall(lambda: [detect(image) for image in singles], singles, len(singles))


class LoadedModel:
    """One job's model and inputs, loaded and warmed up in this process, ready to time calls."""

    def __init__(self, job: Job) -> None:
        self.job = job
        self.threads = resolve_threads(job.threads)
        torch.set_num_threads(self.threads)
        if job.device == "cuda" and not torch.cuda.is_available():
            raise ShrinkflowError(
                "benchmark.device is 'cuda' but torch.cuda.is_available() is False"
            )
        self.model = open_model(job.path, job.input_shape, threads=self.threads,
                                device=job.device)
        on_cuda = self.model.device_type == "cuda"
        self._sync = torch.cuda.synchronize if on_cuda else None
        self._timed: dict[int, TimedCall] = {}
        self.rss_mb: dict[int, float] = {}
        memory = PeakRss()
        scenes = load_box_split(job.scenes, "test")[0] if job.scenes and self.model.detect \
            else None  # a detector times real test images
        for batch_size in sorted(job.batch_sizes):
            x = make_input(job.input_shape, batch_size, job.seed) if scenes is None \
                else scene_batch(scenes, batch_size)
            self._timed[batch_size] = timed_call(self.model, x)
            with torch.inference_mode():
                memory.start()  # at least one call, so the peak is never of an empty run
                time_calls(self._timed[batch_size].call, max(job.warmup, 1), 0, self._sync)
                self.rss_mb[batch_size] = memory.stop()
        self.rss_method = memory.method

    def time(self, batch_size: int, calls: int) -> list[float]:
        """Milliseconds of ``calls`` timed calls, after one untimed call to re-warm the caches."""
        with torch.inference_mode():
            return time_calls(self._timed[batch_size].call, 1, calls, self._sync)

    def describe(self) -> dict[str, Any]:
        """What a result row needs besides the timings, in JSON-able form."""
        m = self.model
        detector = {} if m.detect is None else {  # detection rows only: see timed_call
            "calls_per_batch": {str(b): t.model_calls for b, t in self._timed.items()}}
        return {**detector, "runtime": m.runtime.value, "precision": m.precision,
                "device": m.device_type,
                "threads": self.threads, "params": m.params, "macs": m.macs,
                "file_bytes": m.file_bytes, "rss_method": self.rss_method,
                "rss_mb": {str(b): mb for b, mb in self.rss_mb.items()},
                "cpu": cpu_name(), "torch_version": torch.__version__,
                "onnxruntime_version": onnxruntime.__version__}


def serve(job: Job, conn: Connection) -> None:
    """A worker's body: see ``measure.benchmark.Worker`` for the protocol."""
    try:
        model = LoadedModel(job)
    except ShrinkflowError as exc:
        conn.send({"error": str(exc)})
        return
    except Exception:  # noqa: BLE001 - handed to the parent, which names the model
        conn.send({"crash": traceback.format_exc(limit=-8)})
        return
    conn.send(model.describe())
    while (request := conn.recv()) is not None:
        conn.send(model.time(*request))
