"""Raw datasets in the formats prepare reads (IDX, CIFAR-10 pickles, image folders), written small
for tests of the sources and of the prepare stage's bad input."""

from __future__ import annotations

import gzip
import pickle
import struct

import numpy as np
from PIL import Image


def write_idx(path, array, gz=False):
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + b"".join(
        struct.pack(">I", d) for d in array.shape
    )
    data = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if gz else data)


def write_mnist_like(root, gz=False):
    rng = np.random.default_rng(0)
    train_x, test_x = rng.integers(0, 255, (6, 5, 5)), rng.integers(0, 255, (4, 5, 5))
    suffix = ".gz" if gz else ""
    write_idx(root / f"train-images-idx3-ubyte{suffix}", train_x, gz)
    write_idx(root / f"train-labels-idx1-ubyte{suffix}", np.array([0, 1, 2, 0, 1, 2]), gz)
    write_idx(root / f"t10k-images-idx3-ubyte{suffix}", test_x, gz)
    write_idx(root / f"t10k-labels-idx1-ubyte{suffix}", np.array([2, 2, 1, 0]), gz)
    return train_x, test_x


def write_cifar10(root, n=4):
    base = root / "cifar-10-batches-py"
    base.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 255, (n, 3072), dtype=np.uint8),
                 b"labels": [i % 3 for i in range(n)]}
        (base / name).write_bytes(pickle.dumps(batch))
    (base / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"a", b"b", b"c"]}))


def make_folder(root, classes=("cat", "dog"), n=4, size=(12, 10)):
    for k, cls in enumerate(classes):
        (root / cls).mkdir(parents=True)
        for i in range(n):
            Image.new("L", size, 40 * k + i).save(root / cls / f"{i}.png")
