"""Detection's prepared data (shrinkflow.data.prepared_boxes): a round trip, memory-mapped
images, and a file from another run is one line naming it."""

import numpy as np
import pytest

from shrinkflow.core.errors import ShrinkflowError
from shrinkflow.data.digit_scenes import make_digit_scenes
from shrinkflow.data.prepared_boxes import load_box_split, write_box_meta, write_box_split


@pytest.fixture
def prepared(tmp_path):
    images, split = make_digit_scenes(12, canvas=32, max_digits=3, seed=0)
    write_box_split(tmp_path, "train", images, split)
    write_box_meta(tmp_path, split.classes, [1, 32, 32], ["train"])
    return tmp_path, images, split


def test_every_image_gets_its_own_boxes_back_and_images_are_mapped(prepared):
    folder, images, split = prepared
    loaded, meta = load_box_split(folder, "train")
    assert len(loaded) == 12 and meta["classes"] == split.classes
    assert isinstance(loaded.images, np.memmap) and np.array_equal(loaded.images, images)
    for i, scene in enumerate(split.images):
        boxes, labels = loaded.target(i)
        assert np.array_equal(boxes, scene.boxes) and np.array_equal(labels, scene.labels)
    assert sum(len(s.boxes) for s in split.images) == len(loaded.boxes) > 12  # several a scene


@pytest.mark.parametrize("part, value, expected", [
    ("offsets", np.array([0, 1, 2]), "train_offsets.npy: expected 13 non-decreasing offsets"),
    ("labels", np.zeros(1, np.int64), "train_boxes.npy / train_labels.npy: expected"),
], ids=["offsets of another run", "labels of another run"])
def test_a_file_from_another_run_is_one_line_naming_it(prepared, part, value, expected):
    folder, _, _ = prepared
    np.save(folder / f"train_{part}.npy", value)
    with pytest.raises(ShrinkflowError) as info:
        load_box_split(folder, "train")
    assert expected in str(info.value) and len(str(info.value).splitlines()) == 1


def test_labels_outside_the_classes_are_refused(prepared):
    folder, _, _ = prepared
    labels = np.load(folder / "train_labels.npy")
    labels[0] = 10  # the digits have classes 0..9
    np.save(folder / "train_labels.npy", labels)
    with pytest.raises(ShrinkflowError, match=r"class indices must lie in 0\.\.9"):
        load_box_split(folder, "train")


def test_each_task_refuses_the_others_folder_in_one_line(prepared):
    from shrinkflow.data.prepared import load_prepared

    folder, _, _ = prepared
    with pytest.raises(ShrinkflowError, match="format 'shrinkflow-detection/1', expected "
                                              "shrinkflow-prepared/2"):
        load_prepared(folder)
