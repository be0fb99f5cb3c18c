"""Report from synthetic metrics files: the table, the charts, the Pareto front, missing inputs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from pipeline_repo import ROOT

from shrinkflow.core.errors import ShrinkflowError
from shrinkflow.core.metric_keys import ENSEMBLE_ACC, MAP, read_model_list
from shrinkflow.results import report as report_module
from shrinkflow.results.report import (
    best_within,
    build_report,
    ensemble_lines,
    load_metrics,
    model_table,
    pareto_front,
    plot_confusion,
    plot_tradeoff,
)

MODELS = read_model_list(ROOT / "models.yaml")
RUNTIME = {"teacher_onnx": ("onnxruntime", "fp32"), "student_onnx": ("onnxruntime", "fp32"),
           "pruned_onnx": ("onnxruntime", "fp32"),
           "quantized": ("onnxruntime", "int8"),
           "quantized_torch": ("torch_int8", "int8")}  # the rest: ("torch", "fp32")

ACC = {"teacher": 0.98, "student_scratch": 0.93, "student": 0.96, "pruned": 0.955,
       "quantized": 0.95, "quantized_torch": 0.945}
SIZE = {"teacher": 4_000_000, "teacher_onnx": 3_900_000, "student_scratch": 400_000,
        "student": 400_000, "student_onnx": 390_000, "pruned": 100_000, "pruned_onnx": 98_000,
        "quantized": 30_000, "quantized_torch": 40_000}
B64_MS = {"teacher": 40.0, "teacher_onnx": 10.0, "student_scratch": 8.0, "student": 8.0,
          "student_onnx": 2.5, "pruned": 4.0, "pruned_onnx": 2.0, "quantized": 1.0,
          "quantized_torch": 2.5}


def selection(status: str = "selected", budget: float = 3.0) -> dict:
    """metrics/selection.json as select_final writes it (two of the candidates)."""
    def candidate(name, within):
        acc = ACC[name]
        return {"model": name, "file": f"models/{name}", "runtime": "onnxruntime int8",
                "acc": acc, "acc_low": acc - 0.03, "acc_high": acc + 0.02, "test_images": 270,
                "drop_points": round((ACC["teacher"] - acc) * 100, 4),
                "file_bytes": SIZE[name], "p50_ms": B64_MS[name], "p50_low_ms": None,
                "p50_high_ms": None, "speedup": 10.0, "speedup_low": 9.5, "speedup_high": 10.4,
                "speedup_vs_teacher": 40.0, "within_budget": within}

    chosen = status == "selected"
    return {"status": status, "final_model": "quantized" if chosen else "none",
            "final_file": "models/final/model.onnx" if chosen else None,
            "reason": "fastest at batch 64" if chosen else
            f"no model within {budget:g} points of the teacher; the closest is pruned (drop "
            "2.50 points)", "max_drop_points": budget, "max_file_bytes": 0, "batch_size": 64,
            "teacher_acc": ACC["teacher"], "runner_up": None, "tied": [], "closest": None,
            "candidates": [candidate("quantized", chosen), candidate("pruned", chosen)]}


def write_metrics(root, with_optional: bool = True):
    metrics = root / "metrics"
    metrics.mkdir()
    for name, acc in ACC.items():
        data = {f"{name}_acc": acc, f"{name}_params": SIZE[name] // 4,
                f"{name}_macs": SIZE[name] * 3, f"{name}_file_bytes": SIZE[name],
                f"{name}_test_images": 270}
        (metrics / f"eval_{name}.json").write_text(json.dumps(data))
    rows = []
    for name, ms in B64_MS.items():
        runtime, precision = RUNTIME.get(name, ("torch", "fp32"))
        reference = B64_MS["teacher_onnx" if runtime == "onnxruntime" else "teacher"]
        for b, p50 in ((1, ms / 20), (64, ms)):
            rows.append({"model": name, "runtime": runtime, "precision": precision,
                         "device": "cpu", "threads": 2, "batch_size": b, "p50_ms": p50,
                         "p50_low_ms": p50 * 0.9, "p50_high_ms": p50 * 1.1,
                         "file_bytes": SIZE[name], "params": SIZE[name] // 4,
                         "macs": SIZE[name] * 3, "cpu": "Test CPU", "torch_version": "9.9",
                         "onnxruntime_version": "8.8",
                         "speedup_vs_teacher": B64_MS["teacher"] / ms,
                         "speedup_vs_teacher_same_runtime": reference / ms,
                         "speedup_vs_teacher_same_runtime_low": reference / ms * 0.95,
                         "speedup_vs_teacher_same_runtime_high": reference / ms * 1.05})
    pd.DataFrame(rows).to_csv(metrics / "benchmark.csv", index=False)
    if with_optional:
        (metrics / "selection.json").write_text(json.dumps(selection()))
        (metrics / "distill.json").write_text(json.dumps({"kd_gain_points": 3.0,
                                                          "distill_input_size": "6x6"}))
        (metrics / "prune.json").write_text(json.dumps({"prune_val_student_acc": 0.97}))
        for i, name in enumerate(["teacher", "student_scratch", "distill", "prune"]):
            pd.DataFrame({"epoch": [1, 2, 3], "train_loss": [1.0, 0.5, 0.3 + i / 10],
                          "val_acc": [0.5, 0.8, 0.9 - i / 50]}).to_csv(
                metrics / f"history_{name}.csv", index=False)
        rng = np.random.default_rng(0)
        actual = rng.integers(0, 4, 200)
        predicted = np.where(rng.random(200) < 0.9, actual, rng.integers(0, 4, 200))
        pd.DataFrame({"actual": actual, "predicted": predicted}).to_csv(
            metrics / "confusion_quantized.csv", index=False)
        pd.DataFrame({"layer": ["conv1"] * 3 + ["conv2"] * 3, "ratio": [0.25, 0.5, 0.75] * 2,
                      "accuracy": [0.97, 0.95, 0.8, 0.97, 0.96, 0.94]}).to_csv(
            metrics / "prune_sensitivity.csv", index=False)
    return metrics


def empty_file(path) -> Path:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_bytes(b"")
    return Path(path)


@pytest.fixture
def undrawn(monkeypatch):
    """Charts built but not rendered, for tests of the page's text: rendering build_report's five
    PNGs took 0.6-1 s per call. Which charts there are is still build_report's answer (an empty
    file per chart); the tests that look at pixels render."""

    def save(fig, path):
        return empty_file(path)

    monkeypatch.setattr(report_module, "save_figure", save)


def test_pareto_front_hand_made():
    cost = [1.0, 2.0, 2.0, 3.0, 0.5, math.nan, 4.0]
    acc = [0.90, 0.95, 0.93, 0.95, 0.80, 0.99, 0.97]
    # (2, .93) is beaten by (2, .95); (3, .95) by (2, .95); NaN never on the front.
    assert pareto_front(cost, acc) == [True, True, False, False, True, False, True]


def test_pareto_front_ties_are_both_kept():
    assert pareto_front([1, 1], [0.9, 0.9]) == [True, True]
    assert pareto_front([], []) == []


def test_model_table_values(tmp_path):
    metrics_dir = write_metrics(tmp_path)
    bench = pd.read_csv(metrics_dir / "benchmark.csv")
    df = model_table(load_metrics(metrics_dir), MODELS, bench).set_index("model")
    assert list(df.index) == ["teacher", "teacher_onnx", "student_scratch", "student",
                              "student_onnx", "pruned", "pruned_onnx", "quantized",
                              "quantized_torch"]
    assert df.loc["quantized", "drop_points"] == pytest.approx(3.0)
    assert df.loc["pruned_onnx", "accuracy"] == ACC["pruned"]  # same weights as pruned
    assert df.loc["pruned_onnx", "file_bytes"] == SIZE["pruned_onnx"]  # from the benchmark CSV
    assert df.loc["pruned_onnx", "macs"] == SIZE["pruned_onnx"] * 3
    assert df.loc["quantized", "file_bytes"] == SIZE["quantized"]  # evaluate's figure
    assert df.loc["quantized", "runtime"] == "onnxruntime int8"
    assert df.loc["quantized_torch", "runtime"] == "torch_int8"
    assert df.loc["teacher", "runtime"] == "torch fp32"
    assert df.loc["quantized", "b64_ms"] == 1.0 and df.loc["teacher", "speedup_b64"] == 1.0
    assert df.loc["quantized", "b64_low"] == pytest.approx(0.9)
    assert df.loc["quantized", "acc_low"] < ACC["quantized"] < df.loc["quantized", "acc_high"]
    assert df.loc["quantized", "test_images"] == 270
    assert df.loc["teacher_onnx", "speedup_b64"] == 1.0  # its runtime's reference
    assert df.loc["quantized", "speedup_b64"] == 10.0  # vs teacher_onnx, not the torch teacher
    assert df.loc["quantized_torch", "speedup_b64"] == 16.0


def test_best_within_budget(tmp_path):
    metrics_dir = write_metrics(tmp_path)
    df = model_table(load_metrics(metrics_dir), MODELS, pd.read_csv(metrics_dir / "benchmark.csv"))
    # quantized is 3 pts down, pruned(_onnx) 2.5 (the tolerance absorbs float error)
    assert best_within(df, 2.5, "file_bytes")["model"] == "pruned_onnx"
    assert best_within(df, 2.0, "file_bytes")["model"] == "student_onnx"  # 390 kB < 400 kB
    assert best_within(df, 3.0, "b64_ms")["model"] == "quantized"
    assert best_within(df, -1.0, "b64_ms") is None


def test_build_report_writes_page_and_charts(tmp_path):
    metrics = write_metrics(tmp_path)
    page, charts, notes = build_report(metrics, tmp_path / "reports", max_drop=1.0, models=MODELS)
    text = page.read_text()
    table_rows = [line for line in text.splitlines() if line.startswith("| ")]
    assert len(table_rows) == 1 + 9  # header + one row per model
    for name in ["teacher", "student_scratch", "pruned_onnx", "quantized_torch"]:
        assert any(row.startswith(f"| {name} |") for row in table_rows)
    names = {c.name for c in charts}
    assert names == {"accuracy_vs_latency.png", "accuracy_vs_size.png", "training_curves.png",
                     "confusion_quantized.png", "prune_sensitivity.png"}
    for chart in charts:
        assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and chart.stat().st_size > 5000
        assert f"]({chart.name})" in text
    lead = text.split("\n\n")[1]  # the report leads with the selected final model
    assert lead.startswith("- **Final model: `quantized`** (onnxruntime int8")
    assert "10.00x (9.50-10.40x) faster than the teacher in the same runtime at batch 64" in lead
    assert "95.00 (92.00-97.00) % on 270 test images" in lead
    assert "`teacher_onnx` runs 4.00x faster than the PyTorch `teacher` at batch 64" in lead
    assert "drop 3.00 pts" in text and "+3.00 pts" in text and notes == []
    # distillation vs scratch: in test images, and called a tie or not by the noise rule
    assert "+3.00 pts (8 of 270 test images; a tie: inside the 95 % interval)" in lead
    assert "| quantized | onnxruntime int8 | 95.00 (" in text  # accuracy with its interval
    assert "1.000 (0.900-1.100)" in text  # latency with its interval over the rounds
    assert "- Student input size: 6x6 (what its network sees" in text
    assert "- cpu: Test CPU" in text and "- onnxruntime_version: 8.8" in text
    assert "`pruned_onnx` shares the pruned model's weights and accuracy" in text
    assert not list((tmp_path / "reports").glob(".*tmp"))  # no temp files left behind


def test_build_report_tolerates_missing_optional_inputs(tmp_path):
    metrics = write_metrics(tmp_path, with_optional=False)
    (metrics / "benchmark.csv").unlink()
    (metrics / "eval_quantized_torch.json").unlink()
    page, charts, notes = build_report(metrics, tmp_path / "reports", max_drop=5.0, models=MODELS)
    text = page.read_text()
    assert "quantized_torch" not in text.split("## Models")[1].split("\n\n")[1]
    assert {c.name for c in charts} == {"accuracy_vs_size.png"}
    assert any("history_teacher.csv" in n for n in notes)
    assert "No final model selected" in text  # selection.json is optional too


def test_build_report_requires_teacher_accuracy(tmp_path):
    metrics = tmp_path / "metrics"
    metrics.mkdir()
    (metrics / "eval_student.json").write_text(json.dumps({"student_acc": 0.9}))
    with pytest.raises(ShrinkflowError, match="teacher"):
        build_report(metrics, tmp_path / "reports", max_drop=1.0, models=MODELS)


def test_confusion_chart_stays_reasonable_for_many_classes(tmp_path):
    labels = np.arange(1000) % 100
    pairs = pd.DataFrame({"actual": labels, "predicted": np.roll(labels, 1)})
    path = plot_confusion(pairs, "100 classes", tmp_path / "c.png")
    width, height = Image.open(path).size
    assert 300 < width <= 12 * 120 + 200 and 300 < height <= 12 * 120 + 200


def test_budget_mode_section_and_chart(tmp_path, undrawn):
    metrics = write_metrics(tmp_path, with_optional=False)
    (metrics / "prune.json").write_text(json.dumps({
        "prune_budget_points": 1.0, "prune_step_chosen": 1, "prune_channels": "c1=8 c2=16",
        "prune_stop_reason": "step 2 dropped 1.50 points on validation > budget 1; kept step 1",
        "prune_val_drop_points": 0.4, "prune_acc_drop_points": 1.2,
        "prune_within_budget_on_test": False}))
    pd.DataFrame({"step": [0, 1, 2], "channels": ["c1=8 c2=32", "c1=8 c2=16", "c1=8 c2=8"],
                  "macs": [500_000, 300_000, 200_000], "val_acc": [0.99, 0.986, 0.975],
                  "val_drop_points": [0.0, 0.4, 1.5], "within_budget": [True, True, False]}
                 ).to_csv(metrics / "prune_steps.csv", index=False)
    page, charts, _ = build_report(metrics, tmp_path / "reports", max_drop=1.0, models=MODELS)
    text = page.read_text()
    assert "## Budget-mode pruning" in text and "Kept step 1 (step 0" in text
    assert "`c1=8 c2=16`" in text and "1.20 on test (OVER the budget on test)" in text
    assert "| 2 | c1=8 c2=8 |" in text  # one table row per step
    assert "prune_steps.png" in {c.name for c in charts}


def test_fixed_ratio_has_no_budget_section(tmp_path, undrawn):
    metrics = write_metrics(tmp_path, with_optional=False)
    (metrics / "prune.json").write_text(json.dumps({"prune_budget_points": None}))
    page, charts, _ = build_report(metrics, tmp_path / "reports", max_drop=1.0, models=MODELS)
    assert "Budget-mode" not in page.read_text()
    assert "prune_steps.png" not in {c.name for c in charts}


def test_nothing_within_budget_still_gets_a_report_of_the_candidates(tmp_path, undrawn):
    metrics = write_metrics(tmp_path)
    (metrics / "selection.json").write_text(json.dumps(selection("none_within_budget", 1.0)))
    page, charts, _ = build_report(metrics, tmp_path / "reports", max_drop=1.0, models=MODELS)
    text = page.read_text()
    assert text.split("\n\n")[1].startswith("- **No model within the budget**: no model within 1")
    section = text.split("## No model within the budget")[1].split("## Models")[0]
    assert "| quantized |" in section and "| +2.00 |" in section  # 3 points down, 2 over
    assert "budget.max_drop_points" in section and "bigger student" in section
    assert "distill.train.epochs" in section
    assert "accuracy_vs_latency.png" in {c.name for c in charts}  # charts drawn all the same


def test_tradeoff_chart_marks_the_shipped_model(tmp_path):
    metrics = write_metrics(tmp_path)
    df = model_table(load_metrics(metrics), MODELS, pd.read_csv(metrics / "benchmark.csv"))
    with_mark = plot_tradeoff(df, "b64_ms", "ms", "t", tmp_path / "a.png", shipped="quantized")
    without = plot_tradeoff(df, "b64_ms", "ms", "t", tmp_path / "b.png")
    assert with_mark.read_bytes() != without.read_bytes()
def test_report_lists_each_member_and_the_ensemble_only_when_there_is_one():
    metrics = {"teacher_test_acc": 0.95, "teacher_1_test_acc": 0.94, "teacher_2_test_acc": 0.96,
               "teacher_5_test_acc": 0.5,  # a removed member's file, left behind
               "teacher_ensemble_members": 3, "teacher_ensemble_seeds": "1,2", ENSEMBLE_ACC: 0.97}
    text = "\n".join(ensemble_lines(metrics))
    for line in ("| teacher (member 0) | 95.00 |", "| teacher_1 (seed 1) | 94.00 |",
                 "| teacher_2 (seed 2) | 96.00 |", "| **ensemble** | **97.00** |"):
        assert line in text
    assert "teacher_5" not in text
    assert ensemble_lines({"teacher_test_acc": 0.95}) == []


def test_drops_are_measured_against_the_ensemble_when_there_is_one():
    metrics = {"teacher_acc": 0.95, "student_acc": 0.93, "teacher_test_acc": 0.95,
               ENSEMBLE_ACC: 0.97}
    table = model_table(metrics, MODELS).set_index("model")
    assert table.loc["student", "drop_points"] == pytest.approx(4.0)
    assert table.loc["teacher", "accuracy"] == pytest.approx(0.95)  # member 0's own accuracy
    assert table.loc["teacher", "drop_points"] == pytest.approx(2.0)


def add_rungs(metrics, rungs: dict[str, tuple[float, int]]) -> list:
    """eval_rung_NAME.json per rung (accuracy, params) as distill_rung@NAME writes it; returns the
    model list with those rungs."""
    for name, (acc, params) in rungs.items():
        model = f"rung_{name}"
        (metrics / f"eval_{model}.json").write_text(json.dumps({
            f"{model}_acc": acc, f"{model}_params": params, f"{model}_file_bytes": params * 4,
            f"{model}_test_images": 270}))
    return read_model_list(ROOT / "models.yaml", list(rungs))


def ladder_section(text: str) -> str:
    return text.split("## The student ladder")[1].split("\n## ")[0]


def test_the_ladder_section_names_the_smallest_student_within_the_budget(tmp_path, undrawn):
    metrics = write_metrics(tmp_path)
    models = add_rungs(metrics, {"w8": (0.90, 10_000), "w32": (0.975, 200_000)})
    (metrics / "rung_w8.json").write_text(json.dumps({
        "rung_w8_epochs_trained": 3, "rung_w8_stopped_early": 1}))
    (metrics / "rung_scratch_w32.json").write_text(json.dumps({"rung_w32_kd_gain_points": 1.5}))
    page, charts, _ = build_report(metrics, tmp_path / "reports", max_drop=1.0, models=models)
    section = ladder_section(page.read_text())
    rows = [line for line in section.splitlines() if line.startswith("| ")][1:]
    # smallest first: w8 (10 k params), student_onnx (97.5 k), w32 (200 k)
    assert [r.split(" | ")[0] for r in rows] == ["| rung_w8", "| student_onnx", "| rung_w32"]
    assert "| no | - | - | 3 (stopped early) |" in rows[0]
    assert rows[1].endswith("| +3.00 |") and rows[2].endswith("| +1.50 |")  # KD gains
    assert "Smallest student within the budget: `rung_w32` (200,000 params, drop 0.50" in section
    assert "ladder.png" in {c.name for c in charts}


@pytest.mark.parametrize("w16, advice", [
    (0.90, "size still pays: `rung_w16` -> `rung_w32` gained 7.50 points (outside the noise)"),
    (0.97, "size stopped paying: `rung_w16` -> `rung_w32` changed accuracy by +0.50 points "
           "(inside the noise): train longer"),
], ids=["still climbing", "flat"])
def test_with_no_student_within_the_budget_the_ladder_says_which_way_to_go(tmp_path, w16,
                                                                            advice, undrawn):
    metrics = write_metrics(tmp_path)
    (metrics / "selection.json").write_text(json.dumps(selection("none_within_budget", 0.1)))
    models = add_rungs(metrics, {"w16": (w16, 150_000), "w32": (0.975, 200_000)})
    page, _, _ = build_report(metrics, tmp_path / "reports", max_drop=0.1, models=models)
    section = ladder_section(page.read_text())
    assert "No student is within 0.1 points of the teacher" in section
    assert advice in section
    assert "a budget of 0.50 points (`budget.max_drop_points`) admits `rung_w32`" in section


def test_when_the_main_chain_ships_the_ladder_says_what_a_rung_needs(tmp_path, undrawn):
    metrics = write_metrics(tmp_path)  # quantized shipped (selection.json)
    models = add_rungs(metrics, {"w16": (0.90, 150_000), "w32": (0.975, 200_000)})
    page, _, _ = build_report(metrics, tmp_path / "reports", max_drop=0.1, models=models)
    section = ladder_section(page.read_text())
    assert ("No student of the ladder is within 0.1 points of the teacher as a distilled fp32 "
            "model; `quantized` shipped from the main chain") in section
    assert "size still pays" in section


def test_no_rungs_no_ladder_section(tmp_path, undrawn):
    page, charts, _ = build_report(write_metrics(tmp_path), tmp_path / "reports", max_drop=1.0,
                                   models=MODELS)
    assert "student ladder" not in page.read_text()
    assert "ladder.png" not in {c.name for c in charts}


# --- detection: the same page and charts, in mAP --------------------------------------------


def as_detection(metrics_dir):
    """write_metrics' files as evaluate and select_final write them on detection data: every
    score key ``map`` instead of ``acc``, no interval, histories with ``val_map``."""
    for path in metrics_dir.glob("eval_*.json"):
        data = json.loads(path.read_text())
        path.write_text(json.dumps({k.replace("_acc", "_map"): v for k, v in data.items()}))
    record = selection()
    record["teacher_map"] = record.pop("teacher_acc")
    for c in record["candidates"]:
        c["map"], c["map_low"], c["map_high"] = c.pop("acc"), None, None
        del c["acc_low"], c["acc_high"]
    (metrics_dir / "selection.json").write_text(json.dumps(record))
    for path in metrics_dir.glob("history_*.csv"):
        pd.read_csv(path).rename(columns={"val_acc": "val_map"}).to_csv(path, index=False)
    return metrics_dir


def test_detection_report_says_map_where_classification_says_accuracy(tmp_path, monkeypatch):
    metrics = as_detection(write_metrics(tmp_path))
    labels = []

    def save(fig, path):  # the labels are set before drawing: nothing is rendered
        labels.append((fig.axes[0].get_title(), fig.axes[0].get_ylabel()))
        return empty_file(path)

    monkeypatch.setattr(report_module, "save_figure", save)
    page, charts, _ = build_report(metrics, tmp_path / "reports", max_drop=1.0, models=MODELS,
                                   score=MAP)
    text = page.read_text()
    assert "| mAP x 100 |" in text and "accuracy %" not in text and "Wilson" not in text
    assert "## mAP vs latency" in text and "## mAP vs size" in text
    assert f"mAP {ACC['quantized'] * 100:.2f} (x 100)" in text  # the final model's line
    names = {c.name for c in charts}
    assert {"accuracy_vs_latency.png", "accuracy_vs_size.png", "training_curves.png"} <= names
    assert ("mAP vs latency (b64)", "test mAP (x 100)") in labels
    assert ("Validation mAP", "val mAP (x 100)") in labels
    df = model_table(load_metrics(metrics), MODELS, score=MAP).set_index("model")
    assert df.loc["quantized", "accuracy"] == ACC["quantized"]
    assert math.isnan(df.loc["quantized", "acc_low"])  # mAP: no binomial interval


def test_a_classification_report_reads_no_map_keys(tmp_path):
    metrics = as_detection(write_metrics(tmp_path))
    with pytest.raises(ShrinkflowError, match="no teacher accuracy found"):
        build_report(metrics, tmp_path / "reports", max_drop=1.0, models=MODELS)
