"""Raw data sources (shrinkflow.data.sources): IDX, CIFAR-10, image folders and the bundled digits,
read in chunks, and every damaged or unusable file named in one line."""

import pickle
import struct

import numpy as np
import pytest
from PIL import Image
from raw_sources import make_folder, write_cifar10, write_idx, write_mnist_like

from shrinkflow.core.errors import ShrinkflowError
from shrinkflow.data import sources as data
from shrinkflow.data.prepare import make_splits, resolve_split, split_indices, write_prepared
from shrinkflow.data.sources import (
    check_source,
    load_cifar_source,
    load_digits_source,
    load_idx_source,
    load_imagefolder_source,
    load_source,
    read_idx,
)


@pytest.mark.parametrize("gz", [False, True])
def test_idx_source_keeps_train_and_t10k_apart(tmp_path, gz):
    train_x, test_x = write_mnist_like(tmp_path, gz)
    source = load_idx_source(tmp_path)
    assert [p.name for p in source.parts] == ["train", "test"]
    images, labels = source.read_all()
    assert images.shape == (10, 1, 5, 5) and images.dtype == np.uint8
    assert labels.tolist() == [0, 1, 2, 0, 1, 2, 2, 2, 1, 0]
    np.testing.assert_array_equal(images[0, 0], train_x[0])
    np.testing.assert_array_equal(images[6, 0], test_x[0])
    assert source.classes == ["0", "1", "2"] and source.shape == (1, 5, 5)


def test_idx_streams_in_chunks(tmp_path, monkeypatch):
    train_x, _ = write_mnist_like(tmp_path, gz=True)
    monkeypatch.setattr(data, "CHUNK_BYTES", 2 * 25)  # two 5x5 images per chunk
    chunks = list(load_idx_source(tmp_path).parts[0].chunks())
    assert [len(c) for c in chunks] == [2, 2, 2]
    np.testing.assert_array_equal(np.concatenate(chunks)[:, 0], train_x)


def test_idx_rejects_bad_magic(tmp_path):
    (tmp_path / "x-images-idx3-ubyte").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(ShrinkflowError, match="bad magic"):
        read_idx(tmp_path / "x-images-idx3-ubyte")


def test_idx_missing_labels_is_clear(tmp_path):
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((2, 3, 3)))
    with pytest.raises(ShrinkflowError, match="labels-idx1-ubyte"):
        load_idx_source(tmp_path)


@pytest.mark.parametrize("channels", [1, 3])
def test_imagefolder_source_resizes_and_names_classes(tmp_path, channels):
    for cls, color in [("cat", (255, 0, 0)), ("dog", (0, 0, 255))]:
        (tmp_path / cls).mkdir()
        for i in range(3):
            Image.new("RGB", (20, 12), color).save(tmp_path / cls / f"{i}.png")
    source = load_imagefolder_source(tmp_path, image_size=8, channels=channels)
    images, labels = source.read_all()
    assert images.shape == (6, channels, 8, 8)
    assert source.classes == ["cat", "dog"] and [p.name for p in source.parts] == ["all"]
    assert labels.tolist() == [0, 0, 0, 1, 1, 1]
    if channels == 3:  # red cats, blue dogs
        assert images[0, 0].min() == 255 and images[0, 2].max() == 0
        assert images[3, 2].min() == 255 and images[3, 0].max() == 0
    else:  # grey levels of pure red and pure blue (ITU-R 601-2 luma)
        assert images[0, 0, 0, 0] == 76 and images[3, 0, 0, 0] == 29


def test_imagefolder_without_class_folders_is_clear(tmp_path):
    with pytest.raises(ShrinkflowError, match="no images found"):
        load_imagefolder_source(tmp_path, 8, 1)


def test_cifar_source_reads_torchvision_layout(tmp_path):
    write_cifar10(tmp_path)
    source = load_cifar_source(tmp_path)
    images, labels = source.read_all()
    assert images.shape == (24, 3, 32, 32)
    assert source.classes == ["a", "b", "c"]
    assert [(p.name, len(p.labels)) for p in source.parts] == [("train", 20), ("test", 4)]
    assert labels[:4].tolist() == [0, 1, 2, 0]


def test_cifar_refuses_arbitrary_pickled_objects(tmp_path):
    write_cifar10(tmp_path)
    evil = pickle.dumps({b"data": np.zeros((1, 3072), np.uint8), b"labels": [print]})
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(evil)
    with pytest.raises(ShrinkflowError, match="refusing"):
        load_cifar_source(tmp_path)


def test_cifar_missing_files_is_clear_and_never_downloads(tmp_path):
    with pytest.raises(ShrinkflowError, match="never downloads"):
        load_cifar_source(tmp_path)


def test_check_source_names_the_key(tmp_path):
    with pytest.raises(ShrinkflowError, match="prepare.path is empty"):
        check_source("idx", "")
    with pytest.raises(ShrinkflowError, match="no such directory"):
        check_source("cifar", str(tmp_path / "nope"))
    assert check_source("digits", "") is None


def test_digits_source_is_bundled_and_uint8():
    images, labels = load_digits_source().read_all()
    assert images.shape == (1797, 1, 8, 8) and images.dtype == np.uint8
    assert images.max() == 255 and labels.max() == 9


def test_imagefolder_with_train_and_test_folders(tmp_path):
    make_folder(tmp_path / "train", n=5)
    make_folder(tmp_path / "val", n=2)
    source = load_imagefolder_source(tmp_path, 8, 1)
    assert [(p.name, len(p.labels)) for p in source.parts] == [("train", 10), ("test", 4)]
    splits = make_splits(source, "source", 0.2, 0.2, seed=0)
    images, labels = source.read_all()
    assert labels[splits["test"]].tolist() == [0, 0, 1, 1]
    assert images[splits["test"]][:, 0, 0, 0].tolist() == [0, 1, 40, 41]


def test_auto_split_keeps_a_folder_s_own_test_split_and_pools_the_digits(tmp_path):
    make_folder(tmp_path / "train", n=5)
    make_folder(tmp_path / "test", n=2)
    source = load_imagefolder_source(tmp_path, 8, 1)
    assert resolve_split(source, "auto") == "source"
    auto = make_splits(source, "auto", 0.2, 0.2, seed=0)
    assert all(np.array_equal(auto[k], v)
               for k, v in make_splits(source, "source", 0.2, 0.2, seed=0).items())
    assert len(auto["test"]) == 4  # the folder's 4 test images, none re-split into training
    digits = load_digits_source()
    assert resolve_split(digits, "auto") == "pooled"
    assert resolve_split(digits, "source") == "source"  # an explicit choice stays (and fails)
    assert all(np.array_equal(make_splits(digits, "auto", .15, .15, 0)[k], v)
               for k, v in make_splits(digits, "pooled", .15, .15, 0).items())


@pytest.mark.parametrize("half", ["train", "test"])
def test_path_at_the_train_half_points_at_the_parent(tmp_path, half):
    make_folder(tmp_path / "photos" / "train")
    make_folder(tmp_path / "photos" / "test")
    with pytest.raises(ShrinkflowError, match=r"set prepare.path: '.*/photos' \(its test/ becomes"):
        load_imagefolder_source(tmp_path / "photos" / half, 8, 1)
    make_folder(tmp_path / "alone" / "train")  # a lone train/ of classes is a folder like any
    assert load_imagefolder_source(tmp_path / "alone" / "train", 8, 1).classes == ["cat", "dog"]


def test_test_folder_without_train_folder_is_named(tmp_path):
    make_folder(tmp_path / "test")
    with pytest.raises(ShrinkflowError, match="no train/ folder"):
        load_imagefolder_source(tmp_path, 8, 1)


def test_test_folder_with_unknown_class_is_named(tmp_path):
    make_folder(tmp_path / "train")
    make_folder(tmp_path / "test", classes=("cat", "cow"))
    with pytest.raises(ShrinkflowError, match="cow"):
        load_imagefolder_source(tmp_path, 8, 1)


def test_single_class_is_refused(tmp_path):
    make_folder(tmp_path, classes=("cat",))
    with pytest.raises(ShrinkflowError, match="1 class.*at least 2"):
        load_source("imagefolder", str(tmp_path), 8, 1)


def prepare_stream(source, tmp_path):
    return write_prepared(tmp_path / "out", source, split_indices(source.labels, .2, .2, 0), "x")


def test_truncated_gzip_idx_names_the_file(tmp_path):
    write_mnist_like(tmp_path, gz=True)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:60])
    with pytest.raises(ShrinkflowError, match="train-images-idx3-ubyte.gz.*(truncated|damaged)"):
        prepare_stream(load_idx_source(tmp_path), tmp_path)


def test_corrupt_gzip_idx_names_the_file(tmp_path):
    write_mnist_like(tmp_path, gz=True)
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    data_bytes = bytearray(path.read_bytes())
    data_bytes[12:20] = b"\xff" * 8
    path.write_bytes(bytes(data_bytes))
    with pytest.raises(ShrinkflowError, match="t10k-labels-idx1-ubyte.gz"):
        load_idx_source(tmp_path)


def test_truncated_uncompressed_idx_names_the_file(tmp_path):
    write_mnist_like(tmp_path)
    path = tmp_path / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(ShrinkflowError, match="t10k-images-idx3-ubyte: truncated"):
        prepare_stream(load_idx_source(tmp_path), tmp_path)


@pytest.mark.parametrize("damage", ["truncated_jpeg", "not_an_image"])
def test_damaged_image_names_the_file(tmp_path, damage):
    make_folder(tmp_path)
    bad = tmp_path / "dog" / "bad.jpg"
    if damage == "truncated_jpeg":
        Image.new("RGB", (64, 64), (1, 2, 3)).save(bad, quality=95)
        bad.write_bytes(bad.read_bytes()[:300])
    else:
        bad = tmp_path / "dog" / "bad.png"
        bad.write_text("this is not a png")
    with pytest.raises(ShrinkflowError, match=f"{bad.name}: not a readable image"):
        prepare_stream(load_imagefolder_source(tmp_path, 8, 3), tmp_path)


@pytest.mark.parametrize("payload", [{b"labels": [0]}, [1, 2, 3],
                                     {b"data": "xyz", b"labels": [0]}])
def test_cifar_batch_of_the_wrong_structure_names_the_file(tmp_path, payload):
    write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(pickle.dumps(payload))
    with pytest.raises(ShrinkflowError, match="data_batch_3: expected a dict"):
        load_cifar_source(tmp_path)


# --- labels outside the class range -------------------------------------------------------------


def write_idx_labels(path, labels, code=0x08, dtype=np.uint8):
    """A 1-D IDX label file of any element type (write_idx writes uint8 only)."""
    labels = np.asarray(labels, dtype=np.dtype(dtype).newbyteorder(">"))
    path.write_bytes(struct.pack(">BBBBI", 0, 0, code, 1, len(labels)) + labels.tobytes())


@pytest.mark.parametrize("labels, code, dtype, expect", [
    ([0, 1, 2, 200, 1, 2], 0x08, np.uint8,
     r"train-labels-idx1-ubyte: label 200 at position 3 is outside the class range 0\.\.2 "
     r"\(the labels count 0\.\.2 without a gap; 1 label\(s\)"),
    ([0, 1, -1, 0, 1, 2], 0x09, np.int8,
     r"train-labels-idx1-ubyte: label -1 at position 2 is outside the class range 0\.\.2"),
    ([1, 2, 3, 1, 2, 3], 0x08, np.uint8,  # with t10k's labels 1 and 2 below
     r"labels-idx1-ubyte: label [12] at position 0: no image has label 0"),
    ([0, 1, 2, 0, 1, 2], 0x0D, np.float32, r"train-labels-idx1-ubyte: labels must be integers"),
])
def test_idx_labels_outside_the_class_range_are_refused(tmp_path, labels, code, dtype, expect):
    write_mnist_like(tmp_path)
    write_idx_labels(tmp_path / "train-labels-idx1-ubyte", labels, code, dtype)
    write_idx_labels(tmp_path / "t10k-labels-idx1-ubyte", [2, 2, 1, 1])
    with pytest.raises(ShrinkflowError, match=expect):
        load_idx_source(tmp_path)


def test_cifar_labels_must_index_the_meta_files_class_names(tmp_path):
    write_cifar10(tmp_path)
    base = tmp_path / "cifar-10-batches-py"
    batch = pickle.loads((base / "data_batch_3").read_bytes())
    batch[b"labels"][2] = 7  # the meta file names 3 classes
    (base / "data_batch_3").write_bytes(pickle.dumps(batch))
    with pytest.raises(ShrinkflowError, match=r"data_batch_3: label 7 at position 2 is outside "
                                              r"the class range 0\.\.2 \(.*batches\.meta names 3"):
        load_cifar_source(tmp_path)
    (base / "batches.meta").unlink()  # without names: labels must count from 0 without a gap
    with pytest.raises(ShrinkflowError, match=r"data_batch_3: label 7 at position 2 .* 0\.\.2"):
        load_cifar_source(tmp_path)
