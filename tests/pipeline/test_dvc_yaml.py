"""dvc.yaml's wiring read as data (no DVC run): models.yaml drives the model stages, select
depends on every model file, each extra teacher member is a stage of its own."""

from __future__ import annotations

import yaml
from pipeline_repo import ROOT, pipeline_stages, shipped_params
from test_deps import code_dep_problems

from shrinkflow.core.metric_keys import read_model_list

# the ladder's rungs live in this folder (models.yaml): benchmark and select_final depend on it
LADDER = yaml.safe_load((ROOT / "models.yaml").read_text())["ladder_models"]["folder"]


def test_models_yaml_drives_dvc_yaml():
    models = read_model_list(ROOT / "models.yaml")
    dvc = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    assert "models.yaml" in dvc["vars"]
    evaluate = dvc["stages"]["evaluate"]
    assert evaluate["foreach"] == "${models}"
    assert "${item.file}" in evaluate["do"]["cmd"] and "${item.file}" in evaluate["do"]["deps"]
    bench_deps = dvc["stages"]["benchmark"]["deps"]
    assert "models.yaml" in bench_deps and "models.yaml" in dvc["stages"]["report"]["deps"]
    for m in models:
        assert m.file in bench_deps, f"dvc.yaml: benchmark must depend on {m.file} ({m.name})"
        stage, _, item = m.stage.partition("@")  # export_onnx@teacher: a foreach item
        definition = dvc["stages"][stage]
        if item:
            assert item in definition["foreach"], f"dvc.yaml: {stage} has no item {item}"
            definition = definition["do"]
        outs = [(next(iter(o)) if isinstance(o, dict) else o).replace("${item}", item)
                for o in definition["outs"]]
        assert m.file in outs, f"models.yaml: {m.name} says stage {m.stage} writes {m.file}"
    model_files = {d for d in bench_deps if d.startswith("models/")}
    assert model_files == {m.file for m in models} | {LADDER}, \
        "benchmark deps list a model not in the list"


def test_select_stage_deps_list_every_model_file_and_eval_metrics():
    """DVC cannot template a deps list from models.yaml: check the hand-written one."""
    stage = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["select_final"]
    models = read_model_list(ROOT / "models.yaml")
    expected = {m.file for m in models} | {f"metrics/eval_{m.name}.json" for m in models
                                            if m.evaluated} | {LADDER}
    listed = {d for d in stage["deps"] if d.startswith(("models/", "metrics/eval_"))}
    assert listed == expected


def test_each_rung_is_its_own_stage_writing_what_the_model_list_says(tmp_path):
    """A rung's stage writes the file and eval metrics that benchmark and select_final read
    for it (read_model_list with the rungs), inside the folder they depend on."""
    assert not any(n.startswith("distill_rung@") for n in pipeline_stages(ROOT))  # {}: none
    for name in ("dvc.yaml", "models.yaml"):
        (tmp_path / name).write_text((ROOT / name).read_text())
    rungs = {"w8": {"widths": [8, 16]}, "big": {"depth": 3}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(
        shipped_params({"ladder": {"rungs": rungs}})))
    stages = pipeline_stages(tmp_path)
    for m in read_model_list(ROOT / "models.yaml", rungs)[-2:]:
        s = stages[m.stage]
        outs = {next(iter(o)) for o in s["outs"]}
        assert {m.file, f"metrics/eval_{m.name}.json"} <= outs, (m, outs)
        assert m.file.startswith(f"{LADDER}/")
        rung = m.stage.partition("@")[2]
        assert s["params"][:2] == ["distill", f"ladder.rungs.{rung}"]
        assert not code_dep_problems(m.stage, s)


def test_each_extra_member_is_its_own_stage_and_member_0_never_depends_on_the_list(tmp_path):
    default = pipeline_stages(ROOT)
    assert not any(n.startswith("train_teacher_member@") for n in default)  # [] = no stage
    (tmp_path / "dvc.yaml").write_text((ROOT / "dvc.yaml").read_text())
    (tmp_path / "models.yaml").write_text((ROOT / "models.yaml").read_text())
    params = shipped_params({"teacher": {"ensemble_seeds": [1, 2]}})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    stages = pipeline_stages(tmp_path)
    for seed in (1, 2):
        s = stages[f"train_teacher_member@{seed}"]
        assert s["cmd"] == f"python stages/train_teacher.py {seed}"
        assert list(s["outs"][0]) == [f"models/teachers/teacher_{seed}.pt"]
        assert not code_dep_problems(f"train_teacher_member@{seed}", s)
    assert "teacher.ensemble_seeds" not in stages["train_teacher"]["params"]
    for name in ("distill", "prune", "teacher_ensemble"):
        assert "teacher.ensemble_seeds" in stages[name]["params"]
        assert "models/teachers" in stages[name]["deps"]
    assert (ROOT / "models" / "teachers" / ".gitkeep").is_file()  # the folder dep exists
