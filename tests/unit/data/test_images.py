"""The one image policy (shrinkflow.data.images): prepare and predict turn every file into the
same pixels, convert the modes they claim to, refuse the rest and bombs with one line."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from shrinkflow.core.errors import ShrinkflowError
from shrinkflow.data.images import CARD_NAMES, policy_from_card, read_image
from shrinkflow.data.sources import load_imagefolder_source

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (12, 20, 3), dtype=np.uint8)


def _write(folder, name, image):
    folder.mkdir(parents=True, exist_ok=True)
    image.save(folder / name)
    return folder / name


MODES = {
    "rgb.png": Image.fromarray(RGB),
    "rgba.png": Image.fromarray(np.dstack([RGB, np.full(RGB.shape[:2], 7, np.uint8)])),
    "palette.png": Image.fromarray(RGB).quantize(16),
    "cmyk.jpg": Image.fromarray(RGB).convert("CMYK"),
    "grey16.png": Image.fromarray(RGB[..., 0].astype(np.uint16) * 257),
}


def test_sixteen_bit_is_scaled_not_clipped(tmp_path):
    """65535 -> 255 and 257 * v -> v: the issue's 16-bit PNGs came out as 241-255."""
    path = _write(tmp_path, "g.png", MODES["grey16.png"])
    assert Image.open(path).mode.startswith("I")
    got = read_image(path, 1, 12, 20)[0]
    np.testing.assert_array_equal(got, RGB[..., 0])


@pytest.mark.parametrize("policy", sorted(CARD_NAMES))
def test_prepare_and_predict_see_the_same_pixels(tmp_path, policy):
    """A folder prepared by the imagefolder source and each file read as predict reads it (the
    card's resize name) give identical arrays, for every convertible mode."""
    for i, (name, image) in enumerate(MODES.items()):
        _write(tmp_path / f"c{i % 2}", name, image)
    source = load_imagefolder_source(tmp_path, 16, 3, policy)
    prepared = np.concatenate(list(source.parts[0].chunks()))
    files = sorted((tmp_path / "c0").iterdir()) + sorted((tmp_path / "c1").iterdir())
    card_policy = policy_from_card(CARD_NAMES[policy], "card")
    for row, path in zip(prepared, files, strict=True):
        np.testing.assert_array_equal(row, read_image(path, 3, 16, 16, card_policy))


def test_crop_keeps_the_centre_and_letterbox_pads():
    """A 40x20 image, left half black, right half white, middle column of grey: crop keeps
    the centre square (both halves), letterbox keeps all of it on black bars."""
    arr = np.zeros((20, 40), np.uint8)
    arr[:, 20:] = 255
    im = Image.fromarray(arr)
    from shrinkflow.data import images

    crop = np.asarray(images._resize(im, (10, 10), "crop"))
    box = np.asarray(images._resize(im, (10, 10), "letterbox"))
    assert crop[:, 0].max() < 30 and crop[:, -1].min() > 225  # 20..40 px centre: dark | light
    assert box[:2].max() == 0 and box[-2:].max() == 0  # bars above and below
    assert box[5, -1] > 225 and box[5, 0] < 30


def test_bomb_and_float_are_one_line(tmp_path, monkeypatch):
    path = _write(tmp_path, "big.png", Image.new("L", (100, 100)))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 5000)
    with pytest.raises(ShrinkflowError, match=r"big.png: 100x100 = 10,000 pixels, over the "
                                              r"decompression-bomb limit of 5,000"):
        read_image(path, 1, 8, 8)
    monkeypatch.undo()
    tif = _write(tmp_path, "f.tif", Image.new("F", (8, 8)))
    with pytest.raises(ShrinkflowError, match=r"f.tif: mode F image \(float pixels\)"):
        read_image(tif, 1, 8, 8)


def test_empty_class_folder_is_refused(tmp_path):
    _write(tmp_path / "a", "x.png", Image.new("L", (4, 4)))
    _write(tmp_path / "c", "x.png", Image.new("L", (4, 4)))
    (tmp_path / "b").mkdir()
    with pytest.raises(ShrinkflowError, match=r"/b: class folder holds no images"):
        load_imagefolder_source(tmp_path, 8, 1)


def test_unknown_card_resize_is_one_line():
    with pytest.raises(ShrinkflowError, match="'preprocessing.resize' = 'nearest'"):
        policy_from_card("nearest", "m.onnx")
