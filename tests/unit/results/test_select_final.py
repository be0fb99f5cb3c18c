"""The final-model choice (shrinkflow.results.select_final) on hand-made metrics: the budget, the
ranking, the failure line, the flat metrics and the card, drops against a teacher ensemble."""

from __future__ import annotations

import pytest
from pipeline_repo import ROOT

from shrinkflow.core.errors import ShrinkflowError
from shrinkflow.core.metric_keys import (
    ENSEMBLE_ACC,
    FINAL_FIELDS,
    ModelEntry,
    final_key,
    read_model_list,
    task_score,
)
from shrinkflow.model_files.card import check_card
from shrinkflow.results.select_final import (
    Candidate,
    build_candidates,
    choose,
    final_card,
    final_metrics,
    selection_record,
)


def cand(name: str, drop: float, ms: float, size: int = 1000,
         same: float | None = 2.0, spread: float = 0.0, n: int = 270) -> Candidate:
    """A candidate; ``spread``: the half-width of its latency's interval over the rounds."""
    return Candidate(name=name, file=f"models/{name}.onnx", runtime="onnxruntime",
                     precision="fp32", accuracy=0.98 - drop / 100, drop_points=drop,
                     file_bytes=size, p50_ms=ms, speedup_same_runtime=same,
                     speedup_vs_teacher=None, test_images=n, p50_low_ms=ms - spread,
                     p50_high_ms=ms + spread)


def test_picks_the_fastest_within_the_budget():
    cands = [cand("student", 0.1, 4.0), cand("pruned_onnx", 0.5, 1.0),
             cand("quantized", 1.5, 0.5),  # fastest, but outside the 1-point budget
             cand("quantized_torch", 0.9, 2.0)]
    s = choose(cands, max_drop_points=1.0, batch_size=64)
    assert s.final.name == "pruned_onnx"
    assert s.runner_up.name == "quantized_torch"
    assert (s.passed, s.considered) == (3, 4)
    assert "batch 64" in s.reason and "quantized_torch" in s.reason


def test_a_wider_budget_lets_the_faster_less_accurate_model_win():
    cands = [cand("pruned_onnx", 0.5, 1.0), cand("quantized", 1.5, 0.5)]
    assert choose(cands, max_drop_points=2.0).final.name == "quantized"


def test_drop_equal_to_the_budget_passes():
    assert choose([cand("a", 1.0, 1.0)], max_drop_points=1.0).final.name == "a"


def test_never_ships_a_model_slower_than_one_it_beat_on_accuracy():
    # int8 less accurate AND slower than its fp32 (measured on a narrow 28x28 model): fp32 wins
    cands = [cand("pruned_onnx", 0.2, 1.3), cand("quantized", 0.6, 1.9),
             cand("student", 0.0, 3.0), cand("pruned", 0.3, 2.5)]
    final = choose(cands, max_drop_points=1.0).final
    assert final.name == "pruned_onnx"
    for other in cands:  # no candidate is both faster and at least as accurate as the winner
        assert not (other.p50_ms < final.p50_ms and other.drop_points <= final.drop_points)


def test_ties_in_latency_go_to_the_more_accurate():
    cands = [cand("b", 0.8, 1.0), cand("a", 0.2, 1.0)]
    assert choose(cands, 1.0).final.name == "a"


def test_file_size_limit():
    cands = [cand("fast_big", 0.1, 1.0, size=5000), cand("slow_small", 0.1, 2.0, size=900)]
    assert choose(cands, 1.0, max_file_bytes=0).final.name == "fast_big"
    assert choose(cands, 1.0, max_file_bytes=1000).final.name == "slow_small"


def test_nothing_within_budget_is_an_answer_naming_the_closest():
    cands = [cand("quantized", 2.5, 0.5), cand("pruned", 1.4, 2.0), cand("student", 1.8, 3.0)]
    s = choose(cands, max_drop_points=1.0)
    assert s.final is None and s.runner_up is None and s.passed == 0 and s.considered == 3
    assert s.closest.name == "pruned"
    assert "\n" not in s.reason and "closest is pruned (drop 1.40 points" in s.reason
    assert [c.name for c in s.candidates] == ["quantized", "pruned", "student"]


def test_size_limit_failure_names_the_size():
    s = choose([cand("a", 0.1, 1.0, size=1000)], 1.0, max_file_bytes=100)
    assert s.final is None
    assert "file <= 100 bytes" in s.reason and "closest is a (drop 0.10 points, 1,000 bytes" \
        in s.reason


def test_a_latency_inside_the_noise_is_a_tie_won_by_accuracy():
    # the case: two int8 models, 1.20 vs 1.59 ms, but the rounds overlap
    fast = cand("quantized", 0.8, 1.20, spread=0.5)
    slow = cand("quantized_twin", 0.4, 1.59, spread=0.5)
    s = choose([fast, slow], 1.0)
    assert s.final.name == "quantized_twin" and s.tied == ("quantized",)
    assert "a tie (inside the noise) with quantized" in s.reason
    # with tight intervals the faster one is clearly faster and wins
    s = choose([cand("quantized", 0.8, 1.20, spread=0.05),
                cand("quantized_twin", 0.4, 1.59, spread=0.05)], 1.0)
    assert s.final.name == "quantized" and s.tied == ()


def test_no_candidates_at_all_is_one_line():
    with pytest.raises(ShrinkflowError, match="no candidate model"):
        choose([], 1.0)


MODELS = [
    ModelEntry("teacher", "models/teacher.pt", "train_teacher", True, "teacher"),
    ModelEntry("teacher_onnx", "models/teacher.onnx", "export_onnx@teacher", False, "teacher",
               "teacher"),
    ModelEntry("student_scratch", "models/student_scratch.pt", "s", True, "student_scratch"),
    ModelEntry("pruned", "models/pruned.pt", "prune", True, "pruned"),
    ModelEntry("pruned_onnx", "models/pruned.onnx", "quantize", False, "pruned", "pruned"),
    ModelEntry("quantized", "models/quantized.onnx", "quantize", True, "quantized"),
]


def bench_row(model: str, b: int, ms: float, runtime: str = "onnxruntime") -> dict:
    # as csv.DictReader gives them: strings, empty for a ratio that was not measured
    return {"model": model, "batch_size": str(b), "p50_ms": str(ms), "runtime": runtime,
            "precision": "fp32", "file_bytes": "1000", "speedup_vs_teacher": "",
            "speedup_vs_teacher_same_runtime": "3.5"}


def test_build_candidates_from_metrics_and_benchmark_rows():
    metrics = {"teacher_acc": 0.99, "student_scratch_acc": 0.97, "pruned_acc": 0.985}
    rows = [bench_row(n, b, 1.0 + i) for i, n in enumerate(
        ["teacher", "teacher_onnx", "student_scratch", "pruned", "pruned_onnx", "quantized"])
        for b in (1, 64)]
    cands, notes = build_candidates(MODELS, metrics, rows, 64, exclude=["student_scratch"])
    by_name = {c.name: c for c in cands}
    # teacher forms and excluded models are never candidates; quantized has no accuracy
    assert set(by_name) == {"pruned", "pruned_onnx"}
    assert by_name["pruned_onnx"].drop_points == pytest.approx(0.5)  # accuracy_of pruned
    assert by_name["pruned_onnx"].p50_ms == 5.0
    assert by_name["pruned"].speedup_same_runtime == 3.5
    assert by_name["pruned"].speedup_vs_teacher is None
    assert notes == ["quantized: no accuracy, not a candidate"]


def test_build_candidates_needs_the_teacher_accuracy():
    with pytest.raises(ShrinkflowError, match="teacher_acc"):
        build_candidates(MODELS, {}, [], 64)


def test_final_metrics_are_few_flat_unique_and_carry_intervals():
    s = choose([cand("pruned_onnx", 0.5, 1.0, size=500), cand("student", 0.1, 4.0)], 1.0, 0, 64)
    metrics = {"teacher_acc": 0.985, "student_acc": 0.984, "student_scratch_acc": 0.98,
               "teacher_test_images": 270}
    out = final_metrics(s, MODELS, metrics)
    assert out["final_model"] == "pruned_onnx" and out["final_within_budget"] is True
    assert out["final_drop_points"] == 0.5 and out["final_speedup"] == 2.0
    assert out["final_acc_low"] < out["final_acc"] < out["final_acc_high"]
    assert out["test_images"] == 270 and out["kd_gain_points"] == pytest.approx(0.4)
    assert out["teacher_acc"] == 0.985 and out["quantized_acc"] is None  # every evaluated model
    assert {final_key(f) for f in FINAL_FIELDS} <= set(out)
    assert len(out) <= 25 and all(not isinstance(v, (dict, list)) for v in out.values())
    assert not any(isinstance(v, str) and " " in v for v in out.values())  # no sentences


def test_nothing_within_budget_still_writes_metrics_and_a_record():
    s = choose([cand("quantized", 2.5, 0.5), cand("pruned", 1.4, 2.0)], 1.0, 0, 64)
    out = final_metrics(s, MODELS, {"teacher_acc": 0.99})
    assert out["final_model"] == "none" and out["final_within_budget"] is False
    assert out["final_acc"] is None and out["teacher_acc"] == 0.99
    record = selection_record(s, None, 64, 1.0, 0, 0.99)
    assert record["status"] == "none_within_budget" and record["closest"] == "pruned"
    assert [c["within_budget"] for c in record["candidates"]] == [False, False]
    assert record["candidates"][1]["acc_low"] < record["candidates"][1]["acc"]


def test_final_card_carries_the_choice_and_what_running_it_needs():
    rows = [bench_row("pruned_onnx", b, ms) for b, ms in ((1, 0.2), (64, 5.0))]
    rows = [{**r, "device": "cpu", "threads": "2", "cpu": "X", "params": "1234", "macs": "99"}
            for r in rows]
    final = build_candidates(MODELS, {"teacher_acc": 0.99, "pruned_acc": 0.985,
                                      "pruned_test_images": 270}, rows, 64)[0][0]
    meta = {"classes": ["a", "b"], "shape": [1, 8, 8], "mean": [0.3], "std": [0.4],
            "source": "digits", "source_sha256": "abc"}
    pipeline = {"commit": "f" * 40, "modified": []}
    card = final_card(final, MODELS, {"teacher_acc": 0.99, "pruned_test_images": 270}, rows,
                      meta, "onnx", pipeline)
    assert check_card(card, "card.json") == card
    assert card["model"] == "pruned_onnx" and card["made_from"] == "models/pruned.onnx"
    assert card["classes"] == ["a", "b"]
    assert card["input"] == {"name": "input", "layout": "NCHW", "dtype": "float32",
                             "channels": 1, "height": 8, "width": 8}
    assert card["preprocessing"]["color_mode"] == "L"
    assert card["preprocessing"]["normalize_in_model"] is True
    assert card["accuracy"]["drop_points"] == pytest.approx(0.5)
    assert card["accuracy"]["test_images"] == 270 and card["accuracy"]["teacher_acc"] == 0.99
    assert card["latency"]["p50_ms"] == [{"batch_size": 1, "ms": 0.2},
                                         {"batch_size": 64, "ms": 5.0}]
    assert card["latency"]["threads"] == 2 and card["size"] == {"params": 1234, "macs": 99}
    assert card["pipeline"] == pipeline


def test_drops_are_measured_against_the_ensemble_when_there_is_one():
    models = read_model_list(ROOT / "models.yaml")
    metrics = {"teacher_acc": 0.95, "student_acc": 0.93, "teacher_test_acc": 0.95}
    rows = [{"model": "student", "batch_size": "64", "p50_ms": "1.0", "runtime": "torch",
             "precision": "fp32", "file_bytes": "100"}]
    single, _ = build_candidates(models, metrics, rows, 64)
    assert single[0].drop_points == pytest.approx(2.0)
    with_ensemble = {**metrics, ENSEMBLE_ACC: 0.97}
    cands, _ = build_candidates(models, with_ensemble, rows, 64)
    assert cands[0].drop_points == pytest.approx(4.0)


# --- detection: the same rule on the test mAP, the budget in mAP points ------------------------

PIPELINE_MODELS = read_model_list(ROOT / "models.yaml")
DETECTION_META = {"task": "detection", "classes": ["a", "b"], "shape": [1, 16, 16],
                  "mean": [0.3], "std": [0.4], "source": "scenes"}


def detection_choice(budget_points: float):
    """Candidates from evaluate's mAP keys: student 2 mAP points below the teacher (slower),
    quantized 6 points below (faster)."""
    score = task_score(DETECTION_META)
    teacher = 0.5
    metrics = {"teacher_map": teacher, "student_map": teacher - 0.02,
               "quantized_map": teacher - 0.06, "student_scratch_map": teacher - 0.1,
               "teacher_test_images": 8, "student_test_images": 8, "quantized_test_images": 8,
               "student_acc": 0.99, "quantized_acc": 0.99}  # never read on detection data
    rows = [bench_row("student", 2, 4.0), bench_row("quantized", 2, 1.0)]
    cands, _ = build_candidates(PIPELINE_MODELS, metrics, rows, 2, score=score)
    return score, metrics, cands, choose(cands, budget_points, 0, 2)


def test_detection_ranks_by_map_with_the_budget_in_map_points():
    score, _, cands, s = detection_choice(budget_points=5.0)
    assert score.field == "map"
    drops = {c.name: c.drop_points for c in cands}
    assert drops == {"student": pytest.approx(2.0), "quantized": pytest.approx(6.0)}
    assert s.final.name == "student" and s.passed == 1  # quantized is faster but 6 > 5 points
    assert choose(cands, 6.0, 0, 2).final.name == "quantized"  # inside a 6-point budget


def test_detection_figures_say_map_and_carry_no_made_up_interval():
    score, metrics, _, s = detection_choice(budget_points=5.0)
    out = final_metrics(s, PIPELINE_MODELS, metrics, score)
    assert out[final_key("acc", score)] == out["final_map"] == pytest.approx(0.48)
    assert out["final_map_low"] is None and out["final_map_high"] is None
    assert out["teacher_map"] == 0.5 and "final_acc" not in out and "teacher_acc" not in out
    assert out["kd_gain_points"] == pytest.approx(8.0)  # student - scratch, in mAP points
    record = selection_record(s, "models/final/model.onnx", 2, 5.0, 0, 0.5, score)
    assert record["teacher_map"] == 0.5 and "teacher_acc" not in record
    student = next(c for c in record["candidates"] if c["model"] == "student")
    assert student["map"] == pytest.approx(0.48) and student["map_low"] is None
    assert "acc" not in student and student["within_budget"] is True
    card = final_card(s.final, PIPELINE_MODELS, metrics, [bench_row("student", 2, 4.0)],
                      DETECTION_META, "onnx", {"commit": None, "modified": None}, score)
    assert check_card(card, "card.json") == card
    assert card["accuracy"]["test_map"] == pytest.approx(0.48)
    assert card["accuracy"]["teacher_map"] == 0.5 and "test_acc" not in card["accuracy"]


def test_the_task_names_its_score_and_an_unknown_task_is_one_line():
    assert task_score({}).field == "acc"  # a classification meta.json names no task
    assert task_score({"task": "classification"}).binomial is True
    assert task_score(DETECTION_META).binomial is False
    with pytest.raises(ShrinkflowError, match="task 'segmentation'; expected one of"):
        task_score({"task": "segmentation"})
