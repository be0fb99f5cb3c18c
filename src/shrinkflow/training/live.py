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

Nothing the stage owns changes until it succeeds, live progress included: DVCLive clears its
directory when opened, so the previous run's files are first moved aside (``set_aside``, which a
kill cannot lose: it is journaled like a commit), and the stage keeps the new ones by adopting
the directory into its final commit (``out.adopt(LIVE_DIR)``). Training that raises, a failed
commit or a kill puts the previous files back. Stages open this only once their inputs are
validated, so bad input never even moves them.

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

from shrinkflow.core.errors import ShrinkflowError
from shrinkflow.core.outputs import WRITE_ERRNOS, restore_set_aside, set_aside, write_json
from shrinkflow.training.distributed import is_main_process

PROGRESS_FILE = "progress.json"

EpochHook = Callable[[dict[str, Any]], None]


@contextmanager
def live_progress(directory: str | Path, name: str) -> Iterator[EpochHook]:
    """Yield an ``on_epoch(row)`` hook for ``shrinkflow.training.loop.fit`` that logs each row live.

    Entering sets the previous run's live files in ``directory`` aside (module docstring); each
    call rewrites ``metrics.json`` and appends one line per column to the plot TSVs. Under
    torchrun only rank 0 writes; the other ranks get a hook that does nothing.
    """
    if not is_main_process():
        yield lambda row: None
        return
    set_aside(directory)
    progress = Path(directory) / PROGRESS_FILE
    try:
        with Live(str(directory), dvcyaml=None, save_dvc_exp=False, report=None) as live:

            def on_epoch(row: dict[str, Any]) -> None:
                try:
                    live.log_metric(f"{name}_live_epoch", live.step + 1)
                    for key, value in row.items():
                        if key != "epoch" and isinstance(value, (int, float)):
                            live.log_metric(f"{name}_live_{key}", value)
                    live.next_step()
                    write_json(progress, {f"{name}_epochs_done": live.step})
                except OSError as exc:  # a full disk: one line, and the old files come back
                    if exc.errno not in WRITE_ERRNOS:
                        raise
                    raise ShrinkflowError(f"{directory}/: live progress cannot be written "
                                          f"({exc.strerror}); nothing was replaced") from None

            yield on_epoch
    except BaseException:
        restore_set_aside(directory)
        raise
