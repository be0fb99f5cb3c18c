"""Safe saving and loading of models, JSON metrics and CSV plot files, committed together.

A stage's outputs appear together or not at all. ``commit_outputs`` writes every output to a
temporary file (or directory) beside its target and renames them all into place only when the
block succeeds; on an exception it removes the temporaries and the previous complete set stays.
The renames of one commit are listed first in a small journal (one copy in every folder
involved), so a kill between two renames is rolled forward by the next stage that writes into
one of those folders (``check_outputs`` / ``commit_outputs``); the stage's outputs then no longer
match dvc.lock, so ``dvc repro`` also reruns it. Temporaries a killed run left behind carry the
dead writer's pid in their name (``.teacher.pt.<pid>-<hex>.tmp``) and are removed at the next
start. This protects against interruptions and failing writes, not against power loss (no
fsync). Files are written 0644 and directories 0755, so others on a shared machine can read them.

No torch here: model files are ``shrinkflow.model_files.pt`` (written into ``out.file(...)``), so
the stages that write only JSON, CSV and reports (select, report, compare) start without
importing torch (measured: 1.8-2.3 s of their 3.5-4 s).
"""

from __future__ import annotations

import atexit
import csv
import errno
import json
import os
import re
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from shrinkflow.core.errors import ShrinkflowError

# .<target name>.<writer pid>-<8 hex>.tmp<target suffix> : a temporary file or directory beside
# its target; it keeps the target's suffix so readers that go by suffix (.onnx, .pt) can open it
TEMP_NAME = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)-[0-9a-f]{8}\.tmp(\.[^.]+)?$")
JOURNAL_NAME = re.compile(r"^\.shrinkflow-commit\.(?P<pid>\d+)-[0-9a-f]{8}\.json$")


def _temp_beside(target: Path) -> Path:
    name = f".{target.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp{target.suffix}"
    return target.with_name(name)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _replace_dir(tmp: Path, target: Path, old: Path) -> None:
    """Move directory ``tmp`` onto ``target``; any previous ``target`` goes to ``old`` first.

    Each step is safe to repeat, so a journal can roll an interrupted swap forward.
    """
    if tmp.exists():
        if target.exists():
            os.replace(target, old)
        os.replace(tmp, target)
    _remove(old)


def _roll_forward(journal: Path) -> None:
    """Finish the renames an interrupted commit listed in ``journal``, then drop its copies."""
    folder = journal.parent
    try:
        plan = json.loads(journal.read_text())
        for tmp, target, old in plan["renames"]:
            tmp, target = folder / tmp, folder / target
            if old is not None:
                _replace_dir(tmp, target, folder / old)
            elif tmp.exists():
                os.replace(tmp, target)
        copies = [folder / c for c in plan["journals"]]
    except (OSError, ValueError, KeyError, TypeError):
        copies = []  # unreadable or half-done: its temporaries are cleaned up below
    for copy in [journal, *copies]:
        copy.unlink(missing_ok=True)


def recover_folder(folder: str | Path) -> None:
    """Clean up after a killed writer in ``folder``: roll its journals forward, then remove its
    temporaries. Only entries whose writer process is gone are touched."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    entries = list(folder.iterdir())
    for entry in entries:
        match = JOURNAL_NAME.match(entry.name)
        if match and not _alive(int(match["pid"])):
            _roll_forward(entry)
    for entry in folder.iterdir():
        match = TEMP_NAME.match(entry.name)
        if match and not _alive(int(match["pid"])):
            _remove(entry)


# Write failures that are the user's to fix (a full disk or quota, a read-only or forbidden
# folder), reported in one line; any other OSError is a bug and keeps its traceback.
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


def _size(path: Path) -> int:
    """Bytes of a file or of every file under a directory; 0 for what is not there."""
    try:
        if path.is_dir():
            return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        return path.stat().st_size
    except OSError:
        return 0


def _unwritable(folder: Path, exc: OSError) -> ShrinkflowError:
    return ShrinkflowError(
        f"{folder}/: output folder cannot be written ({exc.strerror or exc}); nothing was replaced"
    )


def _ready_folder(target: Path, is_dir: bool) -> None:
    """Create ``target``'s folder, recover it, and refuse a target of the wrong kind."""
    folder = target.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _unwritable(folder, exc) from None
    recover_folder(folder)
    legacy = folder / f".{target.name}.old"  # left by atomic_dir before it had a journal
    if is_dir and legacy.is_dir():
        if target.exists():
            _remove(legacy)
        else:
            os.replace(legacy, target)
    if target.exists() and target.is_dir() != is_dir:
        found, wanted = ("a directory", "file") if target.is_dir() else ("a file", "directory")
        raise ShrinkflowError(f"{target}: is {found} where the output {wanted} goes; move it away")


def check_outputs(*targets: str | Path) -> None:
    """Call at a stage's start: fail with one line, before any work, if an output cannot be
    written (folder missing and not creatable, not a folder, read-only), and clean up what a
    killed run left in those folders. ``commit_outputs`` checks again at the end."""
    for target in map(Path, targets):
        _ready_folder(target, is_dir=False)
        probe = _temp_beside(target)
        try:
            probe.touch()
        except OSError as exc:
            raise _unwritable(target.parent, exc) from None
        probe.unlink()


# --- directories a stage rewrites while it runs ------------------------------------------------

# target -> (its previous content, moved aside; the journal that moves it back after a kill)
_SET_ASIDE: dict[Path, tuple[Path, Path]] = {}


def set_aside(target: str | Path) -> None:
    """Move directory ``target`` aside before the stage rewrites it in place while it runs
    (DVCLive's live progress, which ``dvc exp show`` reads there during the run), so the
    previous run's files come back unless the stage commits (``Outputs.adopt``).

    The way back is journaled like a commit: a kill is undone by the next stage that writes into
    that folder (``recover_folder``); a failure in this process is undone by ``commit_outputs``
    failing, by ``restore_set_aside`` (live progress calls it when training raises) or at exit.
    """
    target = Path(target).absolute()  # the process may chdir before it restores at exit
    if target in _SET_ASIDE:
        return
    _ready_folder(target, is_dir=True)  # also puts back what a killed run set aside
    backup, old = _temp_beside(target), _temp_beside(target)
    journal = target.parent / f".shrinkflow-commit.{os.getpid()}-{secrets.token_hex(4)}.json"
    scratch = _temp_beside(journal)
    try:
        scratch.write_text(json.dumps({"renames": [(backup.name, target.name, old.name)],
                                       "journals": [journal.name]}))
        os.replace(scratch, journal)
        if target.exists():
            os.replace(target, backup)
    except OSError as exc:
        scratch.unlink(missing_ok=True)
        journal.unlink(missing_ok=True)
        raise _unwritable(target.parent, exc) from None
    if not _SET_ASIDE:
        atexit.register(restore_set_aside)
    _SET_ASIDE[target] = (backup, journal)


def restore_set_aside(target: str | Path | None = None) -> None:
    """Put back what ``set_aside`` moved (``target``, or every directory still aside): the
    stage did not succeed, so its half-written replacement goes."""
    for t in [Path(target).absolute()] if target is not None else list(_SET_ASIDE):
        if t not in _SET_ASIDE:
            continue
        backup, journal = _SET_ASIDE.pop(t)
        _remove(t)
        if backup.exists():
            os.replace(backup, t)
        journal.unlink(missing_ok=True)


def _drop_set_aside(target: Path) -> None:
    """The stage committed: the previous run's files set aside are no longer needed."""
    backup, journal = _SET_ASIDE.pop(target)
    journal.unlink(missing_ok=True)
    _remove(backup)


class Outputs:
    """The outputs of one stage, staged as temporaries; see ``commit_outputs``."""

    def __init__(self) -> None:
        self.staged: dict[Path, tuple[Path, bool]] = {}  # target -> (temporary, is a directory)
        self.adopted: list[Path] = []  # directories set aside, kept only if this commit succeeds

    def adopt(self, target: str | Path) -> None:
        """Make a directory the stage rewrote in place (``set_aside``) part of this commit: its
        new content stays if the commit succeeds, the previous one comes back if it fails. A
        directory that was not set aside (e.g. an imported teacher logs no progress) is left
        as it is."""
        if Path(target).absolute() in _SET_ASIDE:
            self.adopted.append(Path(target).absolute())

    def _stage(self, target: str | Path, is_dir: bool) -> Path:
        target = Path(target)
        if target in self.staged:
            raise ValueError(f"{target} is already an output of this commit")
        _ready_folder(target, is_dir)
        tmp = _temp_beside(target)
        try:
            if is_dir:
                tmp.mkdir()
                os.chmod(tmp, 0o755)  # readable by others, like a plain mkdir
            else:
                tmp.touch()
                os.chmod(tmp, 0o644)
        except OSError as exc:
            raise _unwritable(target.parent, exc) from None
        self.staged[target] = (tmp, is_dir)
        return tmp

    def file(self, target: str | Path) -> Path:
        """A temporary path to write ``target``'s content to (e.g. an ONNX export)."""
        return self._stage(target, is_dir=False)

    def directory(self, target: str | Path) -> Path:
        """An empty temporary directory that replaces directory ``target`` on commit."""
        return self._stage(target, is_dir=True)

    def json(self, target: str | Path, data: dict[str, Any]) -> None:
        self.file(target).write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")

    def csv(self, target: str | Path, rows: list[dict[str, Any]],
            fieldnames: list[str] | None = None) -> None:
        """Rows (all with the same keys) as CSV; pass ``fieldnames`` when ``rows`` may be empty,
        so a declared plots file still has a header."""
        fieldnames = fieldnames or (list(rows[0]) if rows else [])
        with self.file(target).open("w", newline="") as fh:
            if fieldnames:
                writer = csv.DictWriter(fh, fieldnames=fieldnames)
                writer.writeheader()
                writer.writerows(rows)

    def commit(self) -> None:
        """Journal the renames in every folder involved, rename, drop the journals."""
        if not self.staged:
            for target in self.adopted:
                _drop_set_aside(target)
            self.adopted.clear()
            return
        renames = [(tmp, target, _temp_beside(target) if is_dir else None)
                   for target, (tmp, is_dir) in self.staged.items()]
        folders = sorted({target.parent.resolve() for _, target, _ in renames})
        token = f"{os.getpid()}-{secrets.token_hex(4)}"
        journals = [folder / f".shrinkflow-commit.{token}.json" for folder in folders]
        for journal in journals:
            def rel(path: Path | None, here: Path = journal.parent) -> str | None:
                return None if path is None else os.path.relpath(path.resolve(), here)

            plan = {"renames": [(rel(t), rel(g), rel(o)) for t, g, o in renames],
                    "journals": [rel(j) for j in journals]}
            scratch = _temp_beside(journal)
            scratch.write_text(json.dumps(plan))
            os.replace(scratch, journal)  # a journal exists whole or not at all
        try:
            for tmp, target, old in renames:
                if old is not None:
                    _replace_dir(tmp, target, old)
                else:
                    os.replace(tmp, target)
        except OSError as exc:  # after the checks in _ready_folder: a race or a broken disk
            raise ShrinkflowError(f"{exc.filename}: could not put the outputs in place "
                                  f"({exc.strerror}); run the stage again") from exc
        for journal in journals:
            journal.unlink()
        self.staged.clear()
        for target in self.adopted:
            _drop_set_aside(target)
        self.adopted.clear()

    def write_error(self, exc: OSError) -> ShrinkflowError:
        """One line for a write that failed (``WRITE_ERRNOS``), before the temporaries go: the
        folder, and for a full disk the bytes needed (about the previous outputs' size, or more
        when more was already written) and free."""
        tmps = {tmp: target for target, (tmp, _) in self.staged.items()}
        failed = Path(exc.filename) if exc.filename else None
        target = tmps.get(failed) if failed is not None else None
        if target is None:  # torch.save and friends write through a handle: no file name
            target = next(reversed(self.staged)) if self.staged else failed or Path(".")
        folder = target.parent
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            return _unwritable(folder, exc)
        written = sum(_size(tmp) for tmp in tmps)
        previous = sum(_size(t) for t in self.staged)
        try:
            free = f"{shutil.disk_usage(folder).free:,} bytes free"
        except OSError:
            free = "free space unknown"
        return ShrinkflowError(
            f"{folder}/: no space left on the device while writing {target.name}: the stage's "
            f"outputs need about {max(written, previous):,} bytes ({free}); nothing was "
            "replaced, free some space and run the stage again")

    def discard(self) -> None:
        for tmp, _ in self.staged.values():
            _remove(tmp)
        self.staged.clear()
        for target in self.adopted:  # the commit failed: the previous run's files come back
            restore_set_aside(target)
        self.adopted.clear()


@contextmanager
def commit_outputs() -> Iterator[Outputs]:
    """Stage every output of a stage, then put them all in place together::

        with commit_outputs() as out:
            write_model_file(out.file(MODEL_OUT), model, spec)   # shrinkflow.model_files.pt
            out.csv(HISTORY_OUT, history)
            out.json(METRICS_OUT, metrics)

    If the block raises (or a folder cannot be written, which is one ShrinkflowError line naming
    it), no output is replaced and the temporaries are removed. A disk that fills up while the
    outputs are written is one line too (``write_error``: the folder, the bytes needed and free).
    """
    out = Outputs()
    try:
        yield out
        out.commit()
    except OSError as exc:
        if exc.errno not in WRITE_ERRNOS:
            raise
        raise out.write_error(exc) from None
    finally:
        out.discard()


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the body succeeds.

    A one-file ``commit_outputs``, for package code that writes a single file.
    """
    with commit_outputs() as out:
        yield out.file(path)


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a fresh temporary directory; swap it in for ``path`` only if the body succeeds."""
    with commit_outputs() as out:
        yield out.directory(path)


def write_json(path: str | Path, data: dict[str, Any]) -> None:
    with commit_outputs() as out:
        out.json(path, data)


def read_json(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ShrinkflowError(f"{path}: file not found (has the stage that writes it run?)")
    return json.loads(path.read_text())


def write_csv(
    path: str | Path, rows: list[dict[str, Any]], fieldnames: list[str] | None = None
) -> None:
    with commit_outputs() as out:
        out.csv(path, rows, fieldnames)


def require_inputs(stage: str, inputs: dict[str, str]) -> None:
    """Fail before any work when an input file is missing, naming the stage that writes it.

    ``inputs`` maps each path to the stage that produces it.
    """
    missing = [f"{path} (written by stage {writer})" for path, writer in inputs.items()
               if not Path(path).is_file()]
    if missing:
        raise ShrinkflowError(f"{stage}: missing input(s): " + "; ".join(missing)
                              + f". Run `dvc repro {stage}` to build them first.")
