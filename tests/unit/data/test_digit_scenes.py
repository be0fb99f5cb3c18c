"""The built-in detection scenes: reproducible, each box exactly around its digit, no overlap."""

import numpy as np

from shrinkflow.data.boxes import box_problem
from shrinkflow.data.digit_scenes import make_digit_scenes
from shrinkflow.data.sources import load_digits_source


def test_same_seed_same_bytes_other_seed_other_scenes():
    a, boxes_a = make_digit_scenes(20, seed=0)
    b, boxes_b = make_digit_scenes(20, seed=0)
    c, _ = make_digit_scenes(20, seed=1)
    assert a.tobytes() == b.tobytes()
    assert all(np.array_equal(x.boxes, y.boxes) and np.array_equal(x.labels, y.labels)
               for x, y in zip(boxes_a.images, boxes_b.images, strict=True))
    assert a.tobytes() != c.tobytes()


def test_each_box_holds_its_digit_upscaled_and_nothing_else():
    images, split = make_digit_scenes(30, canvas=48, max_digits=3, scale=2, seed=3)
    digits = np.concatenate(list(load_digits_source().parts[0].chunks()))[:, 0]
    assert images.shape == (30, 1, 48, 48) and images.dtype == np.uint8
    assert split.classes == [str(d) for d in range(10)]
    counts = [len(s.labels) for s in split.images]
    assert min(counts) >= 1 and max(counts) <= 3 and len(set(counts)) > 1
    for image, scene in zip(images[:, 0], split.images, strict=True):
        outside = image.astype(np.int64).copy()
        for box, label in zip(scene.boxes.astype(int), scene.labels, strict=True):
            assert box_problem(box.tolist(), 48, 48) is None
            x0, y0, x1, y1 = box
            crop = image[y0:y1, x0:x1]
            assert crop.shape == (16, 16)
            small = crop[::2, ::2]  # undo the 2x upscale: it must be one of the digits ...
            assert np.array_equal(np.kron(small, np.ones((2, 2), np.uint8)), crop)
            matches = np.flatnonzero((digits == small).all(axis=(1, 2)))
            assert matches.size  # ... of this box's class
            assert label in load_digits_source().parts[0].labels[matches]
            outside[y0:y1, x0:x1] = 0
        assert not outside.any()  # no ink outside the boxes: boxes never overlap or miss


def test_scenes_from_another_source_take_its_digits_and_classes():
    from shrinkflow.data.sources import source_from_arrays

    # two 4x4 "digits": all 7s (class a) and all 200s (class b)
    images = np.stack([np.full((1, 4, 4), 7, np.uint8), np.full((1, 4, 4), 200, np.uint8)])
    source = source_from_arrays(images, np.array([0, 1]), ["a", "b"])
    scenes, split = make_digit_scenes(20, canvas=16, max_digits=2, scale=1, seed=3,
                                      source=source)
    assert split.classes == ["a", "b"]
    for image, scene in zip(scenes, split.images, strict=True):
        for (x0, y0, x1, y1), label in zip(scene.boxes.astype(int), scene.labels, strict=True):
            assert (image[0, y0:y1, x0:x1] == (7, 200)[label]).all()
