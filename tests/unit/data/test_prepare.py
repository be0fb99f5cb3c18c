"""Splitting a source and writing the prepared arrays (shrinkflow.data.prepare): seeded, disjoint,
stratified splits, the source's own test set kept, statistics from the train split only."""

import numpy as np
import pytest
from raw_sources import make_folder, write_cifar10

from shrinkflow.core.errors import ShrinkflowError
from shrinkflow.data.prepare import make_splits, split_indices, write_prepared
from shrinkflow.data.prepared import load_prepared
from shrinkflow.data.sources import (
    load_source,
    source_from_arrays,
)


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


def synthetic_source(n: int = 200):
    """A pooled source of random uint8 images, 4 classes."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, 1, 8, 8), dtype=np.uint8)
    return source_from_arrays(images, np.arange(n) % 4, list("abcd"))


def test_prepared_round_trip_and_train_only_stats(tmp_path):
    source = synthetic_source()
    images, labels = source.read_all()
    splits = split_indices(labels, 0.15, 0.15, 0)
    meta = write_prepared(tmp_path, source, splits, "synthetic")
    prepared = load_prepared(tmp_path)
    assert prepared.meta == meta and meta["split"] == "pooled"
    for name in ("train", "val", "test"):
        np.testing.assert_array_equal(getattr(prepared, name)[0].numpy(), images[splits[name]])
        np.testing.assert_array_equal(getattr(prepared, name)[1].numpy(), labels[splits[name]])
    train = images[splits["train"]] / 255
    assert meta["mean"][0] == pytest.approx(train.mean(), abs=1e-6)
    assert meta["std"][0] == pytest.approx(train.std(), abs=1e-6)


@pytest.mark.parametrize("channels", [1, 3])
def test_source_split_keeps_the_official_test_set(tmp_path, channels):
    """IDX, CIFAR and train/+test/ folders: test is exactly the source's test files."""
    write_cifar10(tmp_path, n=30)  # 150 train + 30 test images
    source = load_source("cifar", str(tmp_path), 32, 3)
    splits = make_splits(source, "source", 0.2, 0.5, seed=1)
    assert splits["test"].tolist() == list(range(150, 180))
    assert len(splits["val"]) == 30 and len(splits["train"]) == 120
    assert not set(splits["val"]) & set(splits["train"])
    assert np.bincount(source.labels[splits["val"]]).tolist() == [10, 10, 10]  # stratified
    again = make_splits(load_source("cifar", str(tmp_path), 32, 3), "source", 0.2, 0.5, seed=1)
    np.testing.assert_array_equal(splits["val"], again["val"])
    meta = write_prepared(tmp_path / "out", source, splits, "cifar", "source")
    assert meta["split"] == "source" and meta["counts"] == {"train": 120, "val": 30, "test": 30}
    test_x = load_prepared(tmp_path / "out").test[0].numpy()
    np.testing.assert_array_equal(test_x, source.read_all()[0][150:])


def test_source_split_without_a_test_split_is_one_clear_line(tmp_path):
    with pytest.raises(ShrinkflowError, match="prepare.split = 'source'.*digits.*pooled"):
        make_splits(synthetic_source(), "source", 0.1, 0.1, 0, "digits")
    make_folder(tmp_path / "flat")
    with pytest.raises(ShrinkflowError, match="no test split"):
        make_splits(load_source("imagefolder", str(tmp_path / "flat"), 8, 1), "source", .1, .1, 0)
