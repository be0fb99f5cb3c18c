"""Detection annotations: COCO and VOC read into corner boxes; every bad annotation one line."""

import json
from pathlib import Path

import numpy as np
import pytest

from shrinkflow.core.errors import ShrinkflowError
from shrinkflow.data.boxes import MAX_LINES, box_problem, read_coco, read_voc


def coco_file(tmp_path: Path, annotations: list[dict]) -> Path:
    doc = {"images": [{"id": 1, "file_name": "a.jpg", "width": 40, "height": 30},
                      {"id": 2, "file_name": "b.jpg", "width": 20, "height": 20}],
           "categories": [{"id": 7, "name": "cat"}, {"id": 3, "name": "dog"}],
           "annotations": annotations}
    path = tmp_path / "instances_train.json"
    path.write_text(json.dumps(doc))
    return path


def test_coco_boxes_become_corners_with_class_indices(tmp_path):
    split = read_coco(coco_file(tmp_path, [
        {"id": 10, "image_id": 1, "category_id": 3, "bbox": [5, 6, 10, 4]},
        {"id": 11, "image_id": 1, "category_id": 7, "bbox": [0, 0, 40, 30]}]))
    assert split.classes == ["cat", "dog"]  # the file's order
    a, b = split.images
    assert (a.file, a.width, a.height) == ("a.jpg", 40, 30)
    np.testing.assert_array_equal(a.boxes, [[5, 6, 15, 10], [0, 0, 40, 30]])
    np.testing.assert_array_equal(a.labels, [1, 0])
    assert b.boxes.shape == (0, 4) and b.labels.shape == (0,)  # an image with no objects


BAD_COCO = {
    "leaves the image": ({"image_id": 1, "category_id": 7, "bbox": [35, 0, 10, 5]},
                         "leaves the 40x30 image"),
    "negative corner": ({"image_id": 1, "category_id": 7, "bbox": [-1, 0, 5, 5]},
                        "leaves the 40x30 image"),
    "zero width": ({"image_id": 1, "category_id": 7, "bbox": [3, 3, 0, 5]}, "has no area"),
    "negative height": ({"image_id": 2, "category_id": 7, "bbox": [3, 3, 2, -1]}, "has no area"),
    "not numbers": ({"image_id": 1, "category_id": 7, "bbox": [1, 2, "3", 4]},
                    "expected 4 finite numbers"),
    "nan": ({"image_id": 1, "category_id": 7, "bbox": [1, 2, float("nan"), 4]},
            "expected 4 finite numbers"),
    "three numbers": ({"image_id": 1, "category_id": 7, "bbox": [1, 2, 3]},
                      "expected 4 finite numbers"),
    "unknown category": ({"image_id": 1, "category_id": 99, "bbox": [1, 1, 2, 2]},
                         "category_id 99 is not in 'categories'"),
    "unknown image": ({"image_id": 5, "category_id": 7, "bbox": [1, 1, 2, 2]},
                      "image_id 5 is not in 'images'"),
}


@pytest.mark.parametrize("case", BAD_COCO, ids=list(BAD_COCO))
def test_coco_bad_annotation_is_one_line_naming_file_and_annotation(tmp_path, case):
    annotation, expected = BAD_COCO[case]
    good = {"id": 1, "image_id": 1, "category_id": 7, "bbox": [1, 1, 2, 2]}
    path = coco_file(tmp_path, [good, {"id": 42, **annotation}])
    with pytest.raises(ShrinkflowError) as info:
        read_coco(path)
    header, *lines = str(info.value).splitlines()
    assert header == "1 bad annotation(s):" and len(lines) == 1, str(info.value)
    assert lines[0].startswith(f"{path}: annotation 42") and expected in lines[0], lines[0]


def test_coco_reports_every_bad_annotation_at_once_capped(tmp_path):
    bad = [{"id": i, "image_id": 1, "category_id": 7, "bbox": [0, 0, 0, 1]}
           for i in range(MAX_LINES + 5)]
    with pytest.raises(ShrinkflowError) as info:
        read_coco(coco_file(tmp_path, bad))
    lines = str(info.value).splitlines()
    assert lines[0] == f"{MAX_LINES + 5} bad annotation(s):"
    assert len(lines) == 1 + MAX_LINES + 1 and lines[-1].endswith("... and 5 more")


def test_coco_that_is_not_instances_is_one_line(tmp_path):
    path = tmp_path / "x.json"
    path.write_text(json.dumps({"images": []}))
    with pytest.raises(ShrinkflowError, match="expected a COCO instances object"):
        read_coco(path)
    path.write_text("{not json")
    with pytest.raises(ShrinkflowError, match="not a readable COCO JSON file"):
        read_coco(path)


def voc_xml(name: str, objects: list[tuple[str, tuple]], size=(40, 30)) -> str:
    body = "".join(f"<object><name>{n}</name><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
                   f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
                   for n, b in objects)
    return (f"<annotation><filename>{name}</filename><size><width>{size[0]}</width>"
            f"<height>{size[1]}</height><depth>3</depth></size>{body}</annotation>")


def voc_folder(tmp_path: Path, files: dict[str, str]) -> Path:
    (tmp_path / "Annotations").mkdir()
    for name, text in files.items():
        (tmp_path / "Annotations" / name).write_text(text)
    return tmp_path


def test_voc_one_based_inclusive_pixels_become_corners(tmp_path):
    folder = voc_folder(tmp_path, {"0001.xml": voc_xml("0001.jpg", [("dog", (1, 1, 40, 30)),
                                                                    ("cat", (6, 7, 15, 10))])})
    split = read_voc(folder)
    assert split.classes == ["cat", "dog"]
    np.testing.assert_array_equal(split.images[0].boxes, [[0, 0, 40, 30], [5, 6, 15, 10]])
    np.testing.assert_array_equal(split.images[0].labels, [1, 0])


@pytest.mark.parametrize("objects, expected", [
    ([("dog", (1, 1, 41, 30))], "leaves the 40x30 image"),
    ([("dog", (5, 5, 4, 9))], "has no area"),
    ([("dog", (5, 5, "x", 9))], "expected 4 finite numbers"),
    ([("horse", (1, 1, 5, 5))], "unknown class 'horse'"),
], ids=["outside", "no area", "not a number", "unknown class"])
def test_voc_bad_object_is_one_line_naming_its_file(tmp_path, objects, expected):
    folder = voc_folder(tmp_path, {"0001.xml": voc_xml("0001.jpg", [("cat", (1, 1, 5, 5))]),
                                   "0002.xml": voc_xml("0002.jpg", objects)})
    with pytest.raises(ShrinkflowError) as info:
        read_voc(folder, classes=["cat", "dog"])
    lines = str(info.value).splitlines()[1:]
    assert len(lines) == 1 and lines[0].startswith(f"{folder}/Annotations/0002.xml: object 0")
    assert expected in lines[0], lines[0]


def test_voc_broken_xml_and_empty_folder_are_one_line(tmp_path):
    with pytest.raises(ShrinkflowError, match="found none"):
        read_voc(tmp_path)
    folder = voc_folder(tmp_path, {"0001.xml": "<annotation><filename>"})
    with pytest.raises(ShrinkflowError, match="0001.xml: not well-formed XML"):
        read_voc(folder)


def test_box_problem_accepts_a_box_touching_the_edges():
    assert box_problem([0, 0, 40, 30], 40, 30) is None
    assert box_problem([0, 0, 40.5, 30], 40, 30) is not None
    assert box_problem([True, 0, 4, 3], 40, 30) is not None  # a bool is not a coordinate
