"""stages/prepare.py run in this process with ``prepare.task: detection``: the built-in scenes are
prepared, and a bad annotation leaves the previous prepared data as it was."""

from __future__ import annotations

import json

import pytest
import yaml
from pipeline_repo import ROOT, run_stage_main, shipped_params

from shrinkflow.core.errors import ShrinkflowError
from shrinkflow.data.prepared_boxes import load_box_split

STAGE = ROOT / "stages" / "prepare.py"
SCENES = {"task": "detection", "source": "scenes", "image_size": 48,
          "scenes": {"train": 10, "val": 3, "test": 3, "max_digits": 2, "digit_scale": 2}}


def test_detection_prepares_scenes_and_a_bad_annotation_keeps_them(tmp_path, monkeypatch,
                                                                    capsys):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "builtin-digits.txt").write_text("the built-in digits\n")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(shipped_params({"prepare": SCENES})))
    monkeypatch.chdir(tmp_path)
    run_stage_main(STAGE)
    assert "(scenes, detection): {'train': 10, 'val': 3, 'test': 3} images" in (
        capsys.readouterr().out)
    train, meta = load_box_split(tmp_path / "data" / "prepared", "train")
    assert len(train) == 10 and meta["classes"] == [str(d) for d in range(10)]
    before = {p.name: p.read_bytes() for p in (tmp_path / "data" / "prepared").iterdir()}

    coco = tmp_path / "data" / "raw" / "boxes"
    (coco / "train").mkdir(parents=True)
    (coco / "train.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "a.png", "width": 8, "height": 8}],
        "annotations": [{"id": 5, "image_id": 1, "category_id": 1, "bbox": [6, 0, 4, 4]}],
        "categories": [{"id": 1, "name": "thing"}]}))
    bad = shipped_params({"prepare": {**SCENES, "source": "coco", "path": "data/raw/boxes"}})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(bad))
    with pytest.raises(ShrinkflowError, match=r"train\.json: annotation 5 \(a\.png\): bbox "
                                              r"\[x, y, w, h\] \[6, 0, 4, 4\]: .* leaves the 8x8"):
        run_stage_main(STAGE)
    after = {p.name: p.read_bytes() for p in (tmp_path / "data" / "prepared").iterdir()}
    assert after == before
