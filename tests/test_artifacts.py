import json

import pytest
import torch

from shrinkflow.artifacts import atomic_dir, atomic_path, load_checkpoint, write_csv, write_json
from shrinkflow.errors import ShrinkflowError


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


def test_pickled_module_files_are_refused(tmp_path):
    torch.save(torch.nn.Linear(2, 2), tmp_path / "evil.pt")  # a whole module: needs unpickling
    with pytest.raises(ShrinkflowError, match="not a loadable shrinkflow model"):
        load_checkpoint(tmp_path / "evil.pt")
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(ShrinkflowError, match="not a shrinkflow model file"):
        load_checkpoint(tmp_path / "other.pt")


def test_saving_the_same_model_twice_gives_identical_bytes(tmp_path):
    from shrinkflow.artifacts import save_model
    from shrinkflow.models import build_model, make_spec
    from shrinkflow.params import ModelSpec

    spec = make_spec(ModelSpec(widths=[4]), 1, 3, [0.5], [0.5])
    torch.manual_seed(0)
    model = build_model(spec)
    save_model(tmp_path / "a.pt", model, spec)
    save_model(tmp_path / "b.pt", model, spec)
    assert (tmp_path / "a.pt").read_bytes() == (tmp_path / "b.pt").read_bytes()


def test_require_inputs_names_missing_files_and_their_stages(tmp_path):
    from shrinkflow.artifacts import require_inputs

    present = tmp_path / "teacher.pt"
    present.write_bytes(b"x")
    require_inputs("distill", {str(present): "train_teacher"})  # nothing missing: no error
    missing = str(tmp_path / "student.pt")
    with pytest.raises(ShrinkflowError, match=r"prune: missing input.*student\.pt.*stage distill"):
        require_inputs("prune", {str(present): "train_teacher", missing: "distill"})
