"""Bad input never costs a good artifact: every case runs a REAL stage script, in a process of
its own (forked from one that imported torch once: stage_server.py), on a copy of one
reproduced tiny project and checks that the stage

- exits non-zero,
- prints ONE line on stderr (``error: ...``, no traceback) naming the key, file or folder,
- leaves every artifact (models/, metrics/, data/, reports/, dvc.lock) byte-identical, with no
  temporary file left behind.

To add a case, add one line to ``CASES``: the stage command, a regex the error line must match,
and what to break (``params`` to change, ``DELETE`` to remove a key, and/or a ``setup`` function
that damages files in the project copy).
"""

from __future__ import annotations

import gzip
import hashlib
import math
import pickle
import re
import shutil
import struct
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from pipeline_repo import copy_repo, dvc, env
from raw_sources import write_cifar10, write_idx

pytestmark = pytest.mark.slow  # end to end: real stage processes

DELETE = object()  # a params value meaning "remove this key"
ARTIFACTS = ["models", "metrics", "data", "reports", "dvclive", "dvc.lock"]

def metrics_is_a_file(root: Path) -> None:
    """An output folder that cannot be written. Tests run as root here, and chmod does not stop
    root, so the folder is replaced by a file: creating anything inside it fails for everyone."""
    shutil.rmtree(root / "metrics")
    (root / "metrics").write_text("not a folder\n")


RAW = "data/raw/bad"  # where the data cases put their damaged source


def idx_source(root: Path, damage: str) -> None:
    """MNIST-like IDX files, one of them damaged."""
    raw = root / RAW
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in [("train", 40), ("t10k", 10)]:
        write_idx(raw / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 255, (n, 6, 6)), True)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 4, True)
    bad = raw / "train-images-idx3-ubyte.gz"
    data = bad.read_bytes()
    if damage != "none":
        bad.write_bytes(data[: len(data) // 2] if damage == "truncated"
                        else data[:10] + b"\0" * 40)


def image_folder(root: Path, classes: tuple[str, ...] = ("cat", "dog"), sub: str = "",
                 bad: str = "") -> None:
    """A small image folder; ``bad`` adds a truncated JPEG or a .png that is not an image."""
    for cls in classes:
        folder = root / RAW / sub / cls
        folder.mkdir(parents=True)
        for i in range(6):
            Image.new("RGB", (10, 10), (40 * i, 0, 0)).save(folder / f"{i}.png")
    if bad == "jpeg":
        path = root / RAW / sub / classes[0] / "cut.jpg"
        Image.new("RGB", (64, 64), (1, 2, 3)).save(path, quality=95)
        path.write_bytes(path.read_bytes()[:300])
    elif bad == "png":
        (root / RAW / sub / classes[0] / "fake.png").write_text("not a png")


def cifar_wrong_structure(root: Path) -> None:
    (root / RAW).mkdir(parents=True)
    write_cifar10(root / RAW, n=4)
    (root / RAW / "cifar-10-batches-py" / "data_batch_2").write_bytes(
        pickle.dumps({b"labels": [0, 1]}))


def garbage_onnx(root: Path) -> None:
    (root / "models" / "garbage.onnx").write_bytes(b"\x08\x07 definitely not protobuf" * 10)


def spec_does_not_match_weights(root: Path) -> None:
    payload = torch.load(root / "models" / "teacher.pt", weights_only=True)
    payload["spec"]["widths"] = [w * 2 for w in payload["spec"]["widths"]]
    torch.save(payload, root / "models" / "mismatch.pt")


def student_as_teacher(root: Path) -> None:
    shutil.copy(root / "models" / "student.pt", root / "models" / "teacher.pt")


def hostile_pt(root: Path, name: str, damage: Callable[[dict], None]) -> None:
    """models/NAME: the teacher's file with its payload damaged (a careful attacker's edit)."""
    payload = torch.load(root / "models" / "teacher.pt", weights_only=True)
    damage(payload)
    torch.save(payload, root / "models" / name)


def huge_spec(payload: dict) -> None:
    """A spec asking for 16 stages of 16 convs of 4096 channels (38 billion parameters) and no
    tensors at all: a 1.5 KB file that used to grow the process to 24 GB."""
    payload["spec"].update(widths=[4096] * 16, depth=16)
    payload["state_dict"] = {}


def reordered_card(payload: dict) -> None:
    """The teacher with a model card whose class list swaps two classes of the data's."""
    payload["meta"]["card"] = {"classes": [str(c) for c in (0, 1, 2, 3, 4, 5, 6, 7, 9, 8)]}


def idx_labels(root: Path, labels: list[int], code: int = 0x08) -> None:
    """An IDX source (idx_source without damage) whose train labels are ``labels``, written with
    IDX element type ``code`` (0x09: signed bytes, so a label can be negative)."""
    idx_source(root, "none")
    n = 40
    values = (np.arange(n) % 4).astype(np.int64)
    values[: len(labels)] = labels
    dtype = ">i1" if code == 0x09 else ">u1"
    body = struct.pack(">BBBBI", 0, 0, code, 1, n) + values.astype(dtype).tobytes()
    (root / RAW / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(body))


def cifar_label(root: Path) -> None:
    """CIFAR-10 whose batches.meta names 3 classes and one label says 7."""
    (root / RAW).mkdir(parents=True)
    write_cifar10(root / RAW, n=4)
    path = root / RAW / "cifar-10-batches-py" / "data_batch_4"
    batch = pickle.loads(path.read_bytes())
    batch[b"labels"][1] = 7
    path.write_bytes(pickle.dumps(batch))


def params_text(text: str, append: bool = False) -> Callable[[Path], None]:
    def setup(root: Path) -> None:
        path = root / "params.yaml"
        path.write_text((path.read_text() if append else "") + text)
    return setup


def aliases(levels: int = 9) -> list:
    """Lists shared 10 ways at each level: yaml.safe_dump writes them as a few anchors and
    aliases (a short file) that stand for 10**levels items."""
    value: list = [1] * 10
    for _ in range(levels):
        value = [value] * 10
    return value


def data(source: str, split: str = "pooled") -> dict[str, Any]:
    return {"prepare.source": source, "prepare.path": RAW, "prepare.split": split,
            "prepare.image_size": 8, "prepare.channels": 1}


IMPORT = {"teacher.mode": "import", "teacher.init": "models/hostile.pt"}


@dataclass(frozen=True)
class Case:
    id: str
    stage: str  # stages/<first word>.py, then its arguments
    expect: str  # regex searched in the one stderr line
    # dotted key -> value or DELETE; not in the repr: an alias-bomb value written out in a failure
    # message would be 10**10 items (it took a worker to 22 GB once)
    params: dict[str, Any] = field(default_factory=dict, repr=False)
    setup: Callable[[Path], None] | None = None
    env: dict[str, str] = field(default_factory=dict)


# (1 - lr * weight_decay) = -9 per step: the weights overflow float32 within about 13 steps on
# any machine, so the loss turns inf/NaN in the first epoch.
DIVERGING = {
    "teacher.train.lr": 10.0, "teacher.train.weight_decay": 1.0, "teacher.train.momentum": 0.99,
    "teacher.train.schedule": "constant", "teacher.train.epochs": 2,
    "teacher.train.max_batches": 16,
}

CASES = [
    Case("distill.T=inf", "distill", r"distill\.T: Input should be a finite number",
         {"distill.T": math.inf}),
    Case("lr=inf", "train_teacher", r"teacher\.train\.lr: Input should be a finite number",
         {"teacher.train.lr": math.inf}),
    Case("lr=1e9", "distill", r"distill\.train\.lr: Input should be less than or equal to 10",
         {"distill.train.lr": 1e9}),
    Case("prune.kd.T=inf", "prune", r"prune\.kd\.T: Input should be a finite number",
         {"prune.kd.T": math.inf}),
    Case("teacher.epochs=0", "train_teacher",
         r"teacher\.train\.epochs: Input should be greater than or equal to 1",
         {"teacher.train.epochs": 0}),
    Case("distill.alpha deleted", "distill",
         r"distill\.alpha: missing from params\.yaml \(the shipped value is 0\.5\)",
         {"distill.alpha": DELETE}),
    Case("batch_sizes=[0,-5]", "benchmark",
         r"benchmark\.batch_sizes: item 0: .*\(got 0\); item 1: .*\(got -5\)",
         {"benchmark.batch_sizes": [0, -5]}),
    Case("cuda without a GPU", "train_teacher",
         r"teacher\.train\.device: no CUDA GPU is visible", {"teacher.train.device": "cuda"},
         env={"CUDA_VISIBLE_DEVICES": ""}),  # hidden, so the case holds on a GPU machine too
    Case("metrics not writable (train)", "train_teacher",
         r"metrics/: output folder cannot be written", setup=metrics_is_a_file),
    Case("metrics not writable (evaluate)", "evaluate teacher models/teacher.pt",
         r"metrics/: output folder cannot be written", setup=metrics_is_a_file),
    # damaged or unusable data: prepare names the file or folder
    Case("truncated gzip IDX", "prepare",
         rf"{RAW}/train-images-idx3-ubyte\.gz: (damaged|truncated)", data("idx"),
         setup=lambda r: idx_source(r, "truncated")),
    Case("corrupt gzip IDX", "prepare", rf"{RAW}/train-images-idx3-ubyte\.gz:",
         data("idx"), setup=lambda r: idx_source(r, "corrupt")),
    Case("truncated JPEG", "prepare", r"cat/cut\.jpg: not a readable image",
         data("imagefolder"), setup=lambda r: image_folder(r, bad="jpeg")),
    Case("non-image .png", "prepare", r"cat/fake\.png: not a readable image",
         data("imagefolder"), setup=lambda r: image_folder(r, bad="png")),
    Case("CIFAR batch of the wrong structure", "prepare", r"data_batch_2: expected a dict",
         {**data("cifar"), "prepare.channels": 3}, setup=cifar_wrong_structure),
    Case("single-class folder", "prepare", r"found 1 class \['cat'\]; .* at least 2",
         data("imagefolder"), setup=lambda r: image_folder(r, classes=("cat",))),
    Case("test/ without train/", "prepare", r"has test/ but no train/ folder",
         data("imagefolder", "source"), setup=lambda r: image_folder(r, sub="test")),
    Case("split source without a test split", "prepare",
         r"prepare\.split = 'source': .* no test split", data("imagefolder", "source"),
         setup=image_folder),
    # damaged or mismatched model files: the stage names the file
    Case("garbage .onnx", "evaluate garbage models/garbage.onnx", r"models/garbage\.onnx",
         setup=garbage_onnx),
    Case(".pt spec does not match its weights", "evaluate mismatch models/mismatch.pt",
         r"models/mismatch\.pt: .*", setup=spec_does_not_match_weights),
    Case("teacher file holds the student", "distill", r"models/teacher\.pt: expected the "
         r"'teacher' model", setup=student_as_teacher),
    # teacher ensembles: a bad seed list, a member not trained yet, a feature method
    Case("ensemble seed = the teacher's", "train_teacher 0",
         r"teacher\.ensemble_seeds: .*must not contain teacher\.train\.seed \(0\)",
         {"teacher.ensemble_seeds": [0]}),
    Case("ensemble member not trained", "prune",
         r"models/teachers/teacher_3\.pt \(written by stage train_teacher_member@3\)",
         {"teacher.ensemble_seeds": [3]}),
    Case("hint with an ensemble", "distill", r"distill\.method = 'hint' needs a single teacher",
         {"teacher.ensemble_seeds": [3], "distill.method": "hint"}),
    Case("NaN loss", "train_teacher",
         r"\[teacher\] the training loss is not finite .* epoch \d+, batch \d+: training stopped "
         r"and nothing was written\. Most likely responsible: teacher\.train\.lr = 10",
         DIVERGING),
    # round two (issue 25). Model files are checked before anything is built from them:
    Case("hostile .pt: huge spec (evaluate)", "evaluate hostile models/hostile.pt",
         r"models/hostile\.pt: weights do not match its spec \(cnn, widths \[4096, .*\]\): "
         r"tensor '[\w.]+' is missing",
         setup=lambda r: hostile_pt(r, "hostile.pt", huge_spec)),
    Case("hostile .pt: huge spec (import)", "train_teacher",
         r"models/hostile\.pt: weights do not match its spec", IMPORT,
         setup=lambda r: hostile_pt(r, "hostile.pt", huge_spec)),
    Case(".pt without meta", "evaluate nometa models/nometa.pt",
         r"models/nometa\.pt: meta: expected a mapping, got missing",
         setup=lambda r: hostile_pt(r, "nometa.pt", lambda p: p.pop("meta"))),
    Case(".pt without num_classes (import)", "train_teacher",
         r"teacher\.init = 'models/hostile\.pt': spec\.num_classes: expected an integer", IMPORT,
         setup=lambda r: hostile_pt(r, "hostile.pt", lambda p: p["spec"].pop("num_classes"))),
    Case(".pt whose state_dict is a list", "evaluate listed models/listed.pt",
         r"models/listed\.pt: state_dict: expected a mapping, got list",
         setup=lambda r: hostile_pt(r, "listed.pt", lambda p: p.update(
             state_dict=list(p["state_dict"].values())))),
    Case("imported model names the classes in another order", "train_teacher",
         r"teacher\.init = 'models/hostile\.pt': class 8 is '9' in the model but '8' in the "
         r"prepared data", IMPORT, setup=lambda r: hostile_pt(r, "hostile.pt", reordered_card)),
    # labels outside the class range: the file, the value and its position
    Case("IDX label 200", "prepare",
         rf"{RAW}/train-labels-idx1-ubyte\.gz: label 200 at position 5 is outside the class "
         r"range 0\.\.3", data("idx"), setup=lambda r: idx_labels(r, [0, 1, 2, 3, 0, 200])),
    Case("IDX label -1", "prepare",
         rf"{RAW}/train-labels-idx1-ubyte\.gz: label -1 at position 2 is outside the class "
         r"range 0\.\.3", data("idx"), setup=lambda r: idx_labels(r, [0, 1, -1], code=0x09)),
    Case("CIFAR label beyond the meta file's classes", "prepare",
         r"data_batch_4: label 7 at position 1 is outside the class range 0\.\.2 \(.*batches\.meta "
         r"names 3 classes", {**data("cifar"), "prepare.channels": 3}, setup=cifar_label),
    # params.yaml as a whole
    Case("misspelled section", "distill",
         r"params\.yaml: unknown section\(s\) distil \(known sections: benchmark, budget, "
         r"distill, evaluate, ladder, prepare, prune, quantize, select, teacher\)",
         setup=params_text("distil:\n  T: 2.0\n", append=True)),
    Case("empty params.yaml", "train_teacher", r"params\.yaml: params file is empty; expected "
         r"the sections benchmark, budget, distill", setup=params_text("# all commented out\n")),
    Case("missing params.yaml", "report", r"params\.yaml: params file not found",
         setup=lambda r: (r / "params.yaml").unlink()),
    Case("a megabyte value is echoed capped", "report",
         r"^error: invalid params: budget\.max_drop_points: .{20,400}$",
         {"budget.max_drop_points": "x" * 2**20}),
    Case("an alias bomb is echoed capped", "report",
         r"^error: invalid params: budget\.max_drop_points: .{20,700}$",
         {"budget.max_drop_points": aliases()}),
    # live progress: a failure after DVCLive started keeps the last good run's files
    Case("teacher.init for another architecture (live kept)", "train_teacher",
         r"teacher\.init = 'models/student\.pt': looks like weights for another architecture",
         {"teacher.init": "models/student.pt"}),
]


@pytest.fixture
def project(reproduced_template, tmp_path) -> Path:
    """A private copy of the session's reproduced tiny project: a case may break anything in it."""
    return copy_repo(reproduced_template.path, tmp_path / "project")


def change_params(root: Path, changes: dict[str, Any]) -> None:
    path = root / "params.yaml"
    params = yaml.safe_load(path.read_text())
    for key, value in changes.items():
        *parents, leaf = key.split(".")
        node = params
        for part in parents:
            node = node[part]
        if value is DELETE:
            del node[leaf]
        else:
            node[leaf] = value
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def snapshot(root: Path) -> dict[str, str]:
    """sha256 of every file under the artifact paths, hidden ones included."""
    files = []
    for name in ARTIFACTS:
        path = root / name
        files += [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(files)}


def run_stage(root: Path, command: str, extra_env: dict[str, str]) -> subprocess.CompletedProcess:
    """``python stages/SCRIPT.py ARGS`` as DVC runs it: through conftest's stage server, so a
    case costs no 2.5-4.5 s of imports (stage_server.py)."""
    script, *args = command.split()
    return subprocess.run(["python", f"stages/{script}.py", *args], cwd=root, timeout=300,
                          env={**env(), "PYTHONPATH": str(root / "src"), **extra_env},
                          capture_output=True, text=True)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_fails_in_one_line_and_keeps_every_artifact(project, case):
    change_params(project, case.params)
    if case.setup is not None:
        case.setup(project)
    before = snapshot(project)
    assert any(name.startswith("models/") for name in before)  # there is something to lose

    result = run_stage(project, case.stage, case.env)

    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0, result.stdout
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert re.search(case.expect, lines[0]), lines[0]
    assert snapshot(project) == before


def test_dvc_repro_fails_cleanly_and_recovers(project):
    """Through DVC: the bad value fails the stage, dvc.lock and every artifact stay as they were,
    and with the value put back the pipeline is up to date again without rerunning anything."""
    before = snapshot(project)
    change_params(project, {"distill.T": math.inf})
    failed = dvc(project, "repro", "distill", check=False)
    assert failed.returncode != 0
    assert "distill.T: Input should be a finite number" in failed.stdout + failed.stderr
    assert "Traceback" not in failed.stdout + failed.stderr
    assert snapshot(project) == before

    subprocess.run(["git", "checkout", "params.yaml"], cwd=project, check=True, env=env())
    assert "Running stage" not in dvc(project, "repro", "distill").stdout
    assert "up to date" in dvc(project, "status", "--with-deps", "distill").stdout
    assert snapshot(project) == before



def small_tmpfs(folder: Path) -> bool:
    """Mount a tmpfs over ``folder`` holding exactly its files, full to the last page, so the
    next byte written there fails with ENOSPC (a full disk without filling the real one).
    False where mounting is not allowed (not root, no CAP_SYS_ADMIN)."""
    files = {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    pages = sum(-(-len(b) // 4096) for b in files.values())
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={pages * 4096}", "tmpfs",
                              str(folder)], capture_output=True)
    if mounted.returncode != 0:
        return False
    for rel, data in files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(data)
    return shutil.disk_usage(folder).free == 0


def test_a_full_disk_is_one_line_and_keeps_every_artifact(project):
    """ENOSPC while evaluate writes its metrics (a tmpfs full to the last page over metrics/):
    one line naming the folder and the bytes the outputs need; nothing replaced or left."""
    folder = project / "metrics"
    if not small_tmpfs(folder):
        pytest.skip("cannot mount a tmpfs here (needs root); tests/test_artifacts.py covers the "
                    "same path with a simulated ENOSPC")
    try:
        before = snapshot(project)
        result = run_stage(project, "evaluate teacher models/teacher.pt", {})
        after = snapshot(project)
    finally:
        subprocess.run(["umount", str(folder)], check=True)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert re.fullmatch(r"error: metrics/: no space left on the device while writing "
                        r"eval_teacher\.json: the stage's outputs need about [1-9][\d,]* bytes "
                        r"\(0 bytes free\); nothing was replaced, free some space and run the "
                        r"stage again", lines[0]), lines[0]
    assert after == before
