"""Detection through DVC, the whole chain on the built-in scenes: `dvc repro` prepares them,
trains an FCOS teacher, the scratch control and the distilled student (KD gain in mAP points),
prunes and quantizes the student, exports, evaluates and benchmarks every model, selects the
final one under the budget in mAP points and writes the report; shrinkflow-predict draws the
final model's boxes; a second `dvc repro` reruns nothing."""

from __future__ import annotations

import csv
import json
import sys

import pytest
from PIL import Image
from pipeline_repo import ROOT, dvc, make_repo, run

from shrinkflow.core.metric_keys import read_model_list
from shrinkflow.data.prepared_boxes import load_box_split
from shrinkflow.model_files.pt import load_model

DETECTION = {"prepare": {"task": "detection", "source": "scenes", "image_size": 32,
                         "scenes": {"train": 32, "val": 8, "test": 8, "max_digits": 2}},
             "teacher": {"model": {"widths": [4, 8], "depth": 1},
                         "train": {"epochs": 1, "batch_size": 16}},
             "distill": {"student": {"widths": [2, 4], "depth": 1}, "alpha": 0.2,
                         "train": {"epochs": 1, "batch_size": 16}},
             # 9 detectors with their NMS: 2 rounds of batch 1 and 2 (10 rounds of 1 and 8 took
             # 11 s of the test's 56)
             "benchmark": {"batch_sizes": [1, 2], "rounds": 2}}


@pytest.mark.slow
def test_dvc_repro_runs_the_whole_chain_on_detection_data(tmp_path):
    repo = make_repo(tmp_path / "repo", DETECTION)
    out = dvc(repo, "repro").stdout
    for stage in ("prepare", "train_teacher", "train_student_scratch", "distill", "prune",
                  "quantize", "export_onnx@student", "evaluate@quantized_torch", "benchmark",
                  "select_final", "report"):
        assert f"Running stage '{stage}'" in out
    assert "(scenes, detection)" in out and "kd gain" in out and "heads kept" in out
    _, payload = load_model(repo / "models" / "teacher.pt", role="teacher")
    student, _ = load_model(repo / "models" / "student.pt", role="student")
    assert payload["spec"]["detector"] == "fcos" and type(student).__name__ == "FCOS"
    metrics = {f.stem: json.loads(f.read_text()) for f in (repo / "metrics").glob("*.json")}
    m, scratch = metrics["distill"], metrics["student_scratch"]
    assert m["distill_scratch_test_map"] == scratch["student_scratch_test_map"]
    assert m["kd_gain_map_points"] == pytest.approx(
        100 * (m["student_test_map"] - scratch["student_scratch_test_map"]), abs=1e-3)
    assert m["distill_params_ratio"] > 1
    # every stage's mAP is evaluate's: the same files measured the same way
    assert metrics["eval_student"]["student_map"] == m["student_test_map"]
    assert metrics["eval_pruned"]["pruned_map"] == metrics["prune"]["pruned_test_map"]
    assert metrics["prune"]["prune_params_after"] < metrics["prune"]["prune_params_before"]
    q = metrics["quantize"]
    assert metrics["eval_quantized"]["quantized_map"] == q["quantized_test_map"]
    assert metrics["eval_quantized_torch"]["quantized_torch_map"] == q["quantized_torch_test_map"]
    assert q["quantize_int8_onnx_bytes"] < q["quantize_fp32_onnx_bytes"]
    assert (repo / "metrics" / "per_class_student.csv").read_text().startswith("class,ap,")
    assert metrics["export_student"]["student_onnx_agreement"] >= 0.98

    with open(repo / "metrics" / "benchmark.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert {(r["model"], r["batch_size"]) for r in rows} == {
        (name, b) for name in ("teacher", "teacher_onnx", "student_scratch", "student",
                               "student_onnx", "pruned", "pruned_onnx", "quantized",
                               "quantized_torch") for b in ("1", "2")}
    calls = {(r["model"], r["batch_size"]): r["calls_per_batch"] for r in rows}
    assert calls[("student", "2")] == "1" and calls[("student_onnx", "2")] == "2"
    final = metrics["final"]
    shipped = final["final_model"]
    assert final["final_map"] == metrics[f"eval_{_evaluated(shipped)}"][
        f"{_evaluated(shipped)}_map"]
    assert "mAP" in (repo / "reports" / "summary.md").read_text()

    drawn, scene = repo / "drawn", repo / "scene.png"
    test, _ = load_box_split(repo / "data" / "prepared", "test")
    Image.fromarray(test.images[0][0]).save(scene)
    model_file = next((repo / "models" / "final").glob("model.*"))
    shown = run(repo, sys.executable, "-m", "shrinkflow.cli.predict", str(model_file),
                "scene.png", "--json", "--min-score", "0", "--draw", "drawn").stdout
    assert json.loads(shown)["file"] == "scene.png" and (drawn / "scene.png").is_file()
    assert "Data and pipelines are up to date" in dvc(repo, "repro").stdout


def _evaluated(name: str) -> str:
    """The evaluated model whose accuracy a benchmark-only form shares (student_onnx ->
    student), as models.yaml says."""
    entry = {m.name: m for m in read_model_list(ROOT / "models.yaml")}[name]
    return entry.accuracy_of
