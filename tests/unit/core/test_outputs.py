"""Atomic outputs (shrinkflow.core.outputs): a stage's outputs land together or not at all, a
kill between renames is rolled forward, temporaries of dead writers are removed."""

import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

import shrinkflow
from shrinkflow.core.errors import ShrinkflowError
from shrinkflow.core.outputs import (
    atomic_dir,
    atomic_path,
    check_outputs,
    commit_outputs,
    write_csv,
    write_json,
)


def test_atomic_path_keeps_previous_file_when_interrupted(tmp_path):
    target = tmp_path / "model.pt"
    target.write_text("previous")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half-writ")
        raise RuntimeError("killed")
    assert target.read_text() == "previous"
    assert list(tmp_path.iterdir()) == [target]  # no temp file left behind


def test_atomic_dir_swaps_only_on_success(tmp_path):
    target = tmp_path / "prepared"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(RuntimeError), atomic_dir(target) as tmp:
        (tmp / "new.txt").write_text("new")
        raise RuntimeError
    assert [p.name for p in target.iterdir()] == ["old.txt"]
    with atomic_dir(target) as tmp:
        (tmp / "new.txt").write_text("new")
    assert [p.name for p in target.iterdir()] == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prepared"]


def test_json_and_csv(tmp_path):
    write_json(tmp_path / "m.json", {"a": 1})
    assert json.loads((tmp_path / "m.json").read_text()) == {"a": 1}
    write_csv(tmp_path / "h.csv", [{"epoch": 1, "acc": 0.5}, {"epoch": 2, "acc": 0.75}])
    assert (tmp_path / "h.csv").read_text().splitlines() == ["epoch,acc", "1,0.5", "2,0.75"]


def test_require_inputs_names_missing_files_and_their_stages(tmp_path):
    from shrinkflow.core.outputs import require_inputs

    present = tmp_path / "teacher.pt"
    present.write_bytes(b"x")
    require_inputs("distill", {str(present): "train_teacher"})  # nothing missing: no error
    missing = str(tmp_path / "student.pt")
    with pytest.raises(ShrinkflowError, match=r"prune: missing input.*student\.pt.*stage distill"):
        require_inputs("prune", {str(present): "train_teacher", missing: "distill"})


# --- a stage's outputs commit together ----------------------------------------------------------

CHILD = """
import os, signal, sys
from pathlib import Path
from shrinkflow.core import outputs as artifacts
real, calls = os.replace, []
def replace_then_die(src, dst):
    calls.append(dst)
    if Path(dst).name == sys.argv[2]:  # killed just before this rename
        os.kill(os.getpid(), signal.SIGKILL)
    real(src, dst)
os.replace = replace_then_die
root = Path(sys.argv[1])
with artifacts.commit_outputs() as out:
    out.json(root / "models" / "a.json", {"v": "new"})
    out.json(root / "metrics" / "b.json", {"v": "new"})
    (out.directory(root / "data" / "prepared") / "x.txt").write_text("new")
"""


def old_project(root):
    for rel in ("models/a.json", "metrics/b.json"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text('{"v": "old"}')
    (root / "data/prepared").mkdir(parents=True)
    (root / "data/prepared/x.txt").write_text("old")


def contents(root):
    return {str(p.relative_to(root)): p.read_text() for p in sorted(root.rglob("*")) if p.is_file()}


def killed_child(root, die_before: str) -> None:
    """Run a commit in a child process that SIGKILLs itself just before renaming ``die_before``."""
    src = Path(shrinkflow.__file__).parents[1]
    proc = subprocess.run([sys.executable, "-c", CHILD, str(root), die_before],
                          env={**os.environ, "PYTHONPATH": str(src)}, capture_output=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr


def test_outputs_appear_together_only_when_the_block_succeeds(tmp_path):
    old_project(tmp_path)
    before = contents(tmp_path)
    with pytest.raises(RuntimeError), commit_outputs() as out:
        out.json(tmp_path / "models/a.json", {"v": "new"})
        out.json(tmp_path / "metrics/b.json", {"v": "new"})
        raise RuntimeError("the stage failed after writing its first outputs")
    assert contents(tmp_path) == before  # nothing replaced, no temporaries left

    with commit_outputs() as out:
        out.json(tmp_path / "models/a.json", {"v": "new"})
        out.csv(tmp_path / "metrics/b.json", [{"v": "new"}])
        (out.directory(tmp_path / "data/prepared") / "y.txt").write_text("new")
    assert contents(tmp_path) == {"models/a.json": '{\n  "v": "new"\n}\n',
                                  "metrics/b.json": "v\nnew\n", "data/prepared/y.txt": "new"}
    assert stat.S_IMODE((tmp_path / "data/prepared").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "models/a.json").stat().st_mode) == 0o644


@pytest.mark.parametrize("blocker", ["file", "directory"])
def test_an_unwritable_output_fails_in_one_line_before_anything_is_replaced(tmp_path, blocker):
    old_project(tmp_path)
    if blocker == "file":  # root ignores permissions, so block the folder itself
        shutil.rmtree(tmp_path / "metrics")
        (tmp_path / "metrics").write_text("not a folder")
        expected = r"metrics/: output folder cannot be written"
    else:
        (tmp_path / "metrics/b.json").unlink()
        (tmp_path / "metrics/b.json").mkdir()
        expected = r"metrics/b\.json: is a directory where the output file goes"
    before = contents(tmp_path)
    for check in (lambda: check_outputs(tmp_path / "models/a.json", tmp_path / "metrics/b.json"),
                  lambda: write_both(tmp_path)):
        with pytest.raises(ShrinkflowError, match=expected) as err:
            check()
        assert "\n" not in str(err.value)
        assert contents(tmp_path) == before


def write_both(root):
    with commit_outputs() as out:
        out.json(root / "models/a.json", {"v": "new"})  # staged first, must not land
        out.json(root / "metrics/b.json", {"v": "new"})


@pytest.mark.parametrize("die_before", ["b.json", "prepared"])
def test_a_kill_between_renames_is_rolled_forward_at_the_next_start(tmp_path, die_before):
    old_project(tmp_path)
    killed_child(tmp_path, die_before)
    if die_before == "prepared":  # killed between the directory swap's two renames
        assert not (tmp_path / "data/prepared").exists()
    assert list((tmp_path / "models").glob(".shrinkflow-commit.*.json"))  # the journal
    check_outputs(tmp_path / "metrics/other.json")  # any stage starting in one of the folders
    assert contents(tmp_path) == {"models/a.json": '{\n  "v": "new"\n}\n',
                                  "metrics/b.json": '{\n  "v": "new"\n}\n',
                                  "data/prepared/x.txt": "new"}  # complete, no leftovers


def test_temporaries_of_a_killed_writer_are_removed_and_live_ones_kept(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    stale = tmp_path / f".teacher.pt.{dead_pid}-0123abcd.tmp"
    stale.write_text("half a model")
    stale_dir = tmp_path / f".prepared.{dead_pid}-0123abcd.tmp"
    stale_dir.mkdir()
    live = tmp_path / f".teacher.pt.{os.getpid()}-0123abcd.tmp"  # a writer still running
    live.write_text("being written")
    user_file = tmp_path / ".notes.tmp"
    user_file.write_text("not ours")
    check_outputs(tmp_path / "teacher.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, user_file.name])


def test_a_prepared_old_left_by_the_previous_swap_is_put_back(tmp_path):
    (tmp_path / ".prepared.old").mkdir()
    (tmp_path / ".prepared.old/meta.json").write_text("{}")
    with pytest.raises(RuntimeError), atomic_dir(tmp_path / "prepared"):
        raise RuntimeError
    assert contents(tmp_path) == {"prepared/meta.json": "{}"}


def test_a_full_disk_is_one_line_naming_the_folder_and_the_bytes(tmp_path, monkeypatch):
    """ENOSPC from a write through a file handle (as torch.save writes): the folder, about the
    bytes the outputs need and the bytes free; the previous outputs stay, no temporary left."""
    import errno

    (tmp_path / "models").mkdir()
    (tmp_path / "models/m.pt").write_bytes(b"x" * 5000)
    (tmp_path / "m.json").write_text("{}")
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    with pytest.raises(ShrinkflowError) as err:
        with commit_outputs() as out:
            out.json(tmp_path / "m.json", {"a": 1})
            with out.file(tmp_path / "models/m.pt").open("wb") as fh:
                fh.write(b"y" * 100)
                raise OSError(errno.ENOSPC, "No space left on device")
    assert re.fullmatch(rf"{tmp_path}/models/: no space left on the device while writing m\.pt: "
                        r"the stage's outputs need about 5,002 bytes \([\d,]+ bytes free\); "
                        r"nothing was replaced, free some space and run the stage again",
                        str(err.value)), str(err.value)
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before
