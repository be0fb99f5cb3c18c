"""Detection's prepare: built-in scenes, COCO and VOC folders into the prepared box arrays;
every bad image one line, all at once, before anything is written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from shrinkflow.core.errors import ShrinkflowError
from shrinkflow.data.prepare_detection import (
    check_detection_source,
    read_detection,
    write_detection,
)
from shrinkflow.data.prepared import load_prepared
from shrinkflow.data.prepared_boxes import load_box_split
from shrinkflow.params.prepare import PrepareParams

SCENES = {"train": 12, "val": 4, "test": 5, "max_digits": 3, "digit_scale": 2}


def scenes_params(**changes) -> PrepareParams:
    return PrepareParams(task="detection", source="scenes", image_size=48,
                         scenes=SCENES, **changes)


def digit_patches(images: np.ndarray, split) -> set[bytes]:
    return {images[i, :, int(y0):int(y1), int(x0):int(x1)].tobytes()
            for i, image in enumerate(split.images) for x0, y0, x1, y1 in image.boxes}


def test_scenes_give_each_split_its_count_and_test_digits_no_training_scene_uses():
    splits = read_detection(scenes_params())
    for name in ("train", "val", "test"):
        images, split = splits[name]
        assert images.shape == (SCENES[name], 1, 48, 48) and len(split.images) == SCENES[name]
        assert all(len(i.boxes) >= 1 for i in split.images)
    train, test = digit_patches(*splits["train"]), digit_patches(*splits["test"])
    assert train and test and not train & test  # held apart: no test digit in a train scene


def test_the_same_params_write_the_same_bytes(tmp_path):
    for run in ("a", "b"):
        write_detection(tmp_path / run, read_detection(scenes_params()), "scenes")
    files = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert "train_boxes.npy" in files and "meta.json" in files
    assert all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes()
               for f in files)
    other = tmp_path / "c"
    write_detection(other, read_detection(scenes_params(seed=1)), "scenes")
    assert (other / "train_x.npy").read_bytes() != (tmp_path / "a" / "train_x.npy").read_bytes()


def test_written_scenes_read_back_with_their_meta(tmp_path):
    splits = read_detection(scenes_params())
    meta = write_detection(tmp_path, splits, "scenes")
    test, read_meta = load_box_split(tmp_path, "test")
    assert read_meta == meta and meta["task"] == "detection" and meta["num_classes"] == 10
    assert meta["counts"] == {"train": 12, "val": 4, "test": 5} and meta["shape"] == [1, 48, 48]
    images, split = splits["test"]
    np.testing.assert_array_equal(test.images, images)
    boxes, labels = test.target(2)
    np.testing.assert_array_equal(boxes, split.images[2].boxes)
    np.testing.assert_array_equal(labels, split.images[2].labels)
    assert meta["boxes"]["test"] == sum(len(i.boxes) for i in split.images)
    x = splits["train"][0] / 255
    assert meta["mean"] == pytest.approx([x.mean()], abs=1e-5)  # train only, as classification


def test_a_classification_stage_refuses_detection_data_naming_the_task(tmp_path):
    write_detection(tmp_path, read_detection(scenes_params()), "scenes")
    with pytest.raises(ShrinkflowError, match=r"holds detection data \(prepare\.task: "
                                              r"detection\); this stage reads classification"):
        load_prepared(tmp_path)


# --- COCO and VOC folders ---

def picture(path: Path, size: tuple[int, int], box: tuple[int, int, int, int]) -> None:
    """A black image with a white rectangle at ``box`` (x0, y0, x1, y1, exclusive)."""
    pixels = np.zeros((size[1], size[0], 3), np.uint8)
    pixels[box[1]:box[3], box[0]:box[2]] = 255
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def coco_folder(root: Path, n: int = 10, splits: tuple[str, ...] = ("train",)) -> Path:
    """``n`` 40x20 images per split, each with one white 10x10 box at x = 2 * i."""
    for name in splits:
        images, annotations = [], []
        for i in range(n):
            picture(root / name / f"{i}.png", (40, 20), (2 * i, 5, 2 * i + 10, 15))
            images.append({"id": i, "file_name": f"{i}.png", "width": 40, "height": 20})
            annotations.append({"id": i, "image_id": i, "category_id": 1 + i % 2,
                                "bbox": [2 * i, 5, 10, 10]})
        (root / f"{name}.json").write_text(json.dumps({
            "images": images, "annotations": annotations,
            "categories": [{"id": 1, "name": "square"}, {"id": 2, "name": "block"}]}))
    return root


def coco_params(root: Path, **changes) -> PrepareParams:
    return PrepareParams(task="detection", source="coco", path=str(root), image_size=20,
                         channels=1, val_fraction=0.2, test_fraction=0.2, **changes)


def test_coco_images_are_squashed_and_their_boxes_scaled_with_them(tmp_path):
    splits = read_detection(coco_params(coco_folder(tmp_path)))
    assert {name: len(images) for name, (images, _) in splits.items()} == {
        "test": 2, "val": 2, "train": 6}  # carved from train: 20 % each
    images, split = splits["train"]
    for pixels, image in zip(images, split.images, strict=True):
        x0, y0, x1, y1 = image.boxes[0]
        assert (y0, y1, x1 - x0) == (5, 15, 5)  # 40x20 -> 20x20: x halves, y stays
        inside = pixels[0, 6:14, int(np.ceil(x0)) + 1:int(x1) - 1]
        assert inside.min() > 200 and pixels[0, 16:].max() < 50  # the box is where the square is
    assert split.classes == ["square", "block"]


def test_coco_splits_with_their_own_files_are_kept(tmp_path):
    splits = read_detection(coco_params(coco_folder(tmp_path, n=5, splits=("train", "test"))))
    assert {name: len(images) for name, (images, _) in splits.items()} == {
        "test": 5, "val": 1, "train": 4}


def test_every_bad_image_is_one_line_at_once(tmp_path):
    root = coco_folder(tmp_path)
    (root / "train" / "3.png").unlink()
    picture(root / "train" / "5.png", (30, 20), (0, 0, 5, 5))
    (root / "train" / "7.png").write_bytes(b"not a png")
    with pytest.raises(ShrinkflowError) as caught:
        read_detection(coco_params(root))
    lines = str(caught.value).splitlines()
    assert lines[0] == "3 bad annotation(s):"
    assert any(line.endswith("3.png: not found (named by the annotations)") for line in lines)
    assert any("5.png: 30x20 pixels, but its annotation says 40x20" in line for line in lines)
    assert any("7.png: not a readable image" in line for line in lines)


def test_a_coco_folder_without_train_json_is_one_line(tmp_path):
    p = coco_params(tmp_path)
    check_detection_source(p)  # the folder exists
    with pytest.raises(ShrinkflowError, match=r"expected train\.json \(COCO instances\)"):
        read_detection(p)
    with pytest.raises(ShrinkflowError, match=r"prepare\.path = '.*nowhere': no such directory"):
        check_detection_source(coco_params(tmp_path / "nowhere"))


def test_test_categories_must_match_train(tmp_path):
    root = coco_folder(tmp_path, n=4, splits=("train", "test"))
    doc = json.loads((root / "test.json").read_text())
    doc["categories"].reverse()
    (root / "test.json").write_text(json.dumps(doc))
    with pytest.raises(ShrinkflowError, match=r"test\.json: categories \['block', 'square'\] "
                                              r"differ from train\.json's"):
        read_detection(coco_params(root))


def test_voc_folders_are_read_and_carved(tmp_path):
    for i in range(6):
        picture(tmp_path / "JPEGImages" / f"{i}.png", (32, 32), (4, 4, 12, 20))
        (tmp_path / "Annotations").mkdir(exist_ok=True)
        (tmp_path / "Annotations" / f"{i}.xml").write_text(
            f"<annotation><filename>{i}.png</filename><size><width>32</width><height>32</height>"
            "</size><object><name>bar</name><bndbox><xmin>5</xmin><ymin>5</ymin><xmax>12</xmax>"
            "<ymax>20</ymax></bndbox></object></annotation>")
    p = PrepareParams(task="detection", source="voc", path=str(tmp_path), image_size=16,
                      val_fraction=0.2, test_fraction=0.2)
    splits = read_detection(p)
    assert {name: len(images) for name, (images, _) in splits.items()} == {
        "test": 2, "val": 2, "train": 2}
    images, split = splits["train"]
    assert images.shape == (2, 3, 16, 16) and split.classes == ["bar"]
    np.testing.assert_array_equal(split.images[0].boxes, [[2, 2, 6, 10]])  # VOC 1-based, halved


@pytest.mark.parametrize(("changes", "message"), [
    ({"task": "detection", "source": "digits"},
     "source 'digits' is not a detection source; expected one of scenes, coco, voc"),
    ({"source": "coco"}, "source 'coco' is not a classification source"),
    ({"task": "detection", "source": "scenes", "resize": "crop"},
     "detection prepares with squash only"),
])
def test_a_source_of_the_other_task_is_refused(changes, message):
    with pytest.raises(ValueError, match=message):
        PrepareParams(**changes)
