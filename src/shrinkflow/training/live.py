"""Live training progress that DVC can read while a stage is still running, through DVCLive.

For an experiment that is running (in the workspace or from the queue, in its temp workspace),
`dvc exp show` and DVC's VS Code extension read the metrics and plots files that dvc.yaml
declares from that workspace as it is at that moment. A training stage that rewrites a small
summary after every epoch therefore shows its progress there, not only its end.

The stage's real outputs (model, ``metrics/<stage>.json``, history CSV) are still written once,
together, at the end. Live progress goes only to its own directory: ``<dir>/metrics.json`` and
``<dir>/plots/metrics/*.tsv`` (DVCLive's layout: every figure of every epoch, declared as a plain
output and a plots directory) and ``<dir>/progress.json``, one key ``<name>_epochs_done``, the
only file dvc.yaml declares as a metric: ``dvc exp show`` is for comparing finished experiments,
and DVCLive's summary (8 figures per stage plus a ``step`` key repeated in every stage's file,
which DVC then prefixes with the file path) filled 36 of its columns.

DVCLive's defaults are switched off where they would fight the pipeline: ``dvcyaml=None`` (it
would rewrite the root dvc.yaml), ``save_dvc_exp=False`` (run outside ``dvc exp run`` it would
create an experiment of its own when it ends) and ``report=None`` (the report stage makes the
offline report).

Keys are ``<name>_live_<column>`` (``teacher_live_val_acc``), so they stay unique across the
project's metrics files and never shadow the final ``<name>_*`` metrics. DVCLive adds one key of
its own, ``step`` (0-based); ``<name>_live_epoch`` (and ``<name>_epochs_done`` in progress.json)
counts the epochs done by the stage, across every ``fit`` call (prune fine-tunes once per
pruning step).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from dvclive import Live

from shrinkflow.core.outputs import write_json
from shrinkflow.training.distributed import is_main_process

PROGRESS_FILE = "progress.json"

EpochHook = Callable[[dict[str, Any]], None]


@contextmanager
def live_progress(directory: str | Path, name: str) -> Iterator[EpochHook]:
    """Yield an ``on_epoch(row)`` hook for ``shrinkflow.training.loop.fit`` that logs each row live.

    Entering clears the previous run's live files in ``directory``; each call rewrites
    ``metrics.json`` and appends one line per column to the plot TSVs. Under torchrun only
    rank 0 writes; the other ranks get a hook that does nothing.
    """
    if not is_main_process():
        yield lambda row: None
        return
    progress = Path(directory) / PROGRESS_FILE
    progress.unlink(missing_ok=True)
    with Live(str(directory), dvcyaml=None, save_dvc_exp=False, report=None) as live:

        def on_epoch(row: dict[str, Any]) -> None:
            live.log_metric(f"{name}_live_epoch", live.step + 1)
            for key, value in row.items():
                if key != "epoch" and isinstance(value, (int, float)):
                    live.log_metric(f"{name}_live_{key}", value)
            live.next_step()
            write_json(progress, {f"{name}_epochs_done": live.step})

        yield on_epoch
