"""Training on several processes: torchrun launches them, DistributedDataParallel keeps one model.

A training stage calls ``launch(cfg.nproc, cfg.device, key)`` once its inputs are validated and
``finish()`` at its very end, and writes its outputs only where ``is_main_process()``:

* ``nproc`` 1 (the default) and not under torchrun: nothing happens; one process trains.
* ``nproc`` N > 1 and not under torchrun: the script reruns itself as
  ``torchrun --standalone --nproc-per-node N <script> <args>``; this first process only waits and
  exits with the workers' status (and one line naming the rank that failed). dvc.yaml's ``cmd``
  stays ``python stages/<stage>.py``, so ``dvc repro`` and ``dvc exp run`` work unchanged.
* Already under torchrun (started by ``launch``, or by the user across nodes with
  ``--nnodes/--rdzv-endpoint``): ``nproc`` is ignored and the process joins the group, gloo for
  CPU tensors and NCCL for CUDA ones. Ranks other than 0 print nothing to stdout (as
  torchvision's reference scripts do); their errors still reach stderr.

``finish()`` is a barrier: every rank leaves only after rank 0 has written the outputs, and a
failure on any rank fails the whole stage (torchrun stops the others).

The collectives ``shrinkflow.training.loop.fit`` needs live here too; each is a no-op in one
process, so
the loop has no second code path.
"""

from __future__ import annotations

import inspect
import os
import shlex
import sys
from collections.abc import Iterable

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed import run as torchrun
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.nn.parallel import DistributedDataParallel

from shrinkflow.core.errors import ShrinkflowError

# torchrun sets these in every worker; their presence means "already launched".
TORCHRUN_VARS = ("LOCAL_RANK", "RANK", "WORLD_SIZE")
# torch 2.14 renamed DDP's broadcast_buffers (now deprecated, with a warning) forward_sync_buffers
_NO_BUFFER_SYNC = next(name for name in ("forward_sync_buffers", "broadcast_buffers")
                       if name in inspect.signature(DistributedDataParallel).parameters)


def under_torchrun() -> bool:
    return all(var in os.environ for var in TORCHRUN_VARS)


def rank_and_world() -> tuple[int, int]:
    """This process's rank and the number of processes (0, 1 outside a process group)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main_process() -> bool:
    return rank_and_world()[0] == 0


# --- launching ---------------------------------------------------------------------------------


def _exit_status(exitcode: int) -> int:
    """A worker's exit code as a shell status: a signal -N becomes 128 + N."""
    return 128 - exitcode if exitcode < 0 else exitcode or 1


def maybe_relaunch(nproc: int, device: str = "auto", key: str = "train.nproc") -> None:
    """With ``nproc`` > 1 outside torchrun, rerun this script under torchrun and exit with its
    status; otherwise return at once. ``key`` names the setting in error messages."""
    if nproc <= 1 or under_torchrun():
        return
    if device != "cpu" and torch.cuda.is_available() and nproc > torch.cuda.device_count():
        raise ShrinkflowError(f"{key} = {nproc}: only {torch.cuda.device_count()} CUDA device(s) "
                              f"are visible; use at most that many, or train.device: cpu")
    # torchrun gives each CPU worker one thread by default; share the cores out instead.
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (cores or 1) // nproc)))
    argv = ["--standalone", f"--nproc-per-node={nproc}", *sys.argv]
    print(f"[launch] torchrun {shlex.join(argv)}", flush=True)
    try:
        # torchrun's own entry point, run in this process so a failure can be told in one line
        # (its console script would print a page of elastic-agent details instead).
        torchrun.run(torchrun.parse_args(argv))
    except ChildFailedError as exc:
        rank, code = root_cause(exc)
        print(f"error: {sys.argv[0]} under torchrun: rank {rank} of {nproc} failed with exit code "
              f"{code} (its messages are above)", file=sys.stderr, flush=True)
        sys.exit(_exit_status(code))
    sys.exit(0)


def root_cause(exc: ChildFailedError) -> tuple[int, int]:
    """(rank, exit code) of the worker that failed first.

    When one rank fails, its peers' collectives fail too (gloo raises "Connection closed by
    peer"), often within the same second, and torchrun's timestamps are whole seconds. Among the
    earliest, a rank that exited with 2 (a ShrinkflowError, via ``run_stage``) is the cause.
    """
    first = min(f.timestamp for f in exc.failures.values())
    earliest = sorted(r for r, f in exc.failures.items() if f.timestamp == first)
    rank = next((r for r in earliest if exc.failures[r].exitcode == 2), earliest[0])
    return rank, exc.failures[rank].exitcode


def init_process_group() -> None:
    """Join the torchrun process group, if under torchrun and not joined yet.

    gloo carries CPU tensors; with CUDA present NCCL carries CUDA ones, and each worker takes the
    GPU numbered by its ``LOCAL_RANK``.
    """
    if not under_torchrun() or dist.is_initialized():
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
        dist.init_process_group("cpu:gloo,cuda:nccl")
    else:
        dist.init_process_group("gloo")
    if dist.get_rank() != 0:
        sys.stdout = open(os.devnull, "w")  # kept open for the process


def launch(nproc: int, device: str = "auto", key: str = "train.nproc") -> None:
    """``maybe_relaunch`` then ``init_process_group``: returns in every process that trains."""
    maybe_relaunch(nproc, device, key)
    init_process_group()


def finish() -> None:
    """Wait for every rank (so none leaves before rank 0 has written), then leave the group."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


# --- what the training loop needs ------------------------------------------------------------


def wrap_ddp(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` in DistributedDataParallel when there are several processes, else itself.

    Buffers are synced from rank 0 once, here, but not before every forward: training-mode batch
    norm does not read them, and ``average_buffers`` makes them agree once per epoch instead.
    """
    if rank_and_world()[1] == 1:
        return model
    device_ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids, **{_NO_BUFFER_SYNC: False})


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over all ranks, in place; returns it."""
    if rank_and_world()[1] > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Average a floating-point ``tensor`` over all ranks, in place; returns it.

    SUM then divide, because ``ReduceOp.AVG`` exists for NCCL only.
    """
    world = rank_and_world()[1]
    if world > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        tensor.div_(world)
    return tensor


def average_gradients(params: Iterable[nn.Parameter]) -> None:
    """All-reduce the gradients of parameters trained outside the DDP model (a hint adapter)."""
    if rank_and_world()[1] == 1:
        return
    for p in params:
        if p.grad is not None:
            all_reduce_mean(p.grad)


def broadcast_from_main(tensors: Iterable[torch.Tensor]) -> None:
    """Overwrite ``tensors`` in place with rank 0's values."""
    if rank_and_world()[1] == 1:
        return
    for t in tensors:
        dist.broadcast(t, src=0)


def average_buffers(model: nn.Module) -> None:
    """Make every rank's buffers agree: batch-norm running statistics are averaged over the ranks
    (each rank saw only its shard; timm's ``distribute_bn`` does the same), any other buffer is
    taken from rank 0. Afterwards all ranks hold the model that rank 0 saves."""
    if rank_and_world()[1] == 1:
        return
    averaged: set[int] = set()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.track_running_stats:
            for stat in (module.running_mean, module.running_var):
                all_reduce_mean(stat)
                averaged.add(id(stat))
    broadcast_from_main(b for b in model.buffers() if id(b) not in averaged)
