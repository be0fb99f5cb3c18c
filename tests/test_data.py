import gzip
import pickle
import struct

import numpy as np
import pytest
from PIL import Image

from shrinkflow.data import (
    check_source,
    load_cifar_source,
    load_digits_source,
    load_idx_source,
    load_imagefolder_source,
    load_prepared,
    read_idx,
    split_indices,
    write_prepared,
)
from shrinkflow.errors import ShrinkflowError


def write_idx(path, array, gz=False):
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + b"".join(
        struct.pack(">I", d) for d in array.shape
    )
    data = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if gz else data)


@pytest.mark.parametrize("gz", [False, True])
def test_idx_source_pairs_images_with_labels(tmp_path, gz):
    rng = np.random.default_rng(0)
    train_x, test_x = rng.integers(0, 255, (6, 5, 5)), rng.integers(0, 255, (4, 5, 5))
    suffix = ".gz" if gz else ""
    write_idx(tmp_path / f"train-images-idx3-ubyte{suffix}", train_x, gz)
    write_idx(tmp_path / f"train-labels-idx1-ubyte{suffix}", np.array([0, 1, 2, 0, 1, 2]), gz)
    write_idx(tmp_path / f"t10k-images-idx3-ubyte{suffix}", test_x, gz)
    write_idx(tmp_path / f"t10k-labels-idx1-ubyte{suffix}", np.array([2, 2, 1, 0]), gz)
    raw = load_idx_source(tmp_path)
    assert raw.images.shape == (10, 1, 5, 5) and raw.images.dtype == np.uint8
    # pairs are sorted by file name: t10k before train
    assert raw.labels.tolist() == [2, 2, 1, 0, 0, 1, 2, 0, 1, 2]
    np.testing.assert_array_equal(raw.images[0, 0], test_x[0])
    assert raw.classes == ["0", "1", "2"]


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
    raw = load_imagefolder_source(tmp_path, image_size=8, channels=channels)
    assert raw.images.shape == (6, channels, 8, 8)
    assert raw.classes == ["cat", "dog"]
    assert raw.labels.tolist() == [0, 0, 0, 1, 1, 1]
    if channels == 3:
        assert raw.images[0, 0].mean() > 200 and raw.images[3, 2].mean() > 200


def test_imagefolder_without_class_folders_is_clear(tmp_path):
    with pytest.raises(ShrinkflowError, match="ImageFolder"):
        load_imagefolder_source(tmp_path, 8, 1)


def write_cifar10(root, n=4):
    base = root / "cifar-10-batches-py"
    base.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 255, (n, 3072), dtype=np.uint8),
                 b"labels": [i % 3 for i in range(n)]}
        (base / name).write_bytes(pickle.dumps(batch))
    (base / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"a", b"b", b"c"]}))


def test_cifar_source_reads_torchvision_layout(tmp_path):
    write_cifar10(tmp_path)
    raw = load_cifar_source(tmp_path)
    assert raw.images.shape == (24, 3, 32, 32)
    assert raw.classes == ["a", "b", "c"]
    assert raw.labels[:4].tolist() == [0, 1, 2, 0]


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
    raw = load_digits_source()
    assert raw.images.shape == (1797, 1, 8, 8) and raw.images.dtype == np.uint8
    assert raw.images.max() == 255 and len(raw.classes) == 10


def test_split_is_deterministic_disjoint_and_stratified():
    labels = np.repeat(np.arange(5), 40)
    a = split_indices(labels, 0.2, 0.2, seed=3)
    b = split_indices(labels, 0.2, 0.2, seed=3)
    c = split_indices(labels, 0.2, 0.2, seed=4)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert not np.array_equal(a["test"], c["test"])
    everything = np.concatenate(list(a.values()))
    assert len(everything) == len(set(everything.tolist())) == 200
    assert np.bincount(labels[a["test"]]).tolist() == [8] * 5


def test_prepared_round_trip_and_train_only_stats(tmp_path):
    raw = load_digits_source()
    splits = split_indices(raw.labels, 0.15, 0.15, 0)
    meta = write_prepared(tmp_path, raw, splits, "digits")
    data = load_prepared(tmp_path)
    assert data.meta == meta
    assert data.train[0].shape[1:] == (1, 8, 8) and len(data.test[1]) == meta["counts"]["test"]
    expected_mean = (raw.images[splits["train"]] / 255).mean()
    assert meta["mean"][0] == pytest.approx(expected_mean, abs=1e-5)


def test_load_prepared_missing_says_run_prepare(tmp_path):
    with pytest.raises(ShrinkflowError, match="prepare"):
        load_prepared(tmp_path)
