"""Reading the prepared arrays (shrinkflow.data.prepared): memory-mapped, and a clear line when
prepare has not run."""

import numpy as np
import pytest

from shrinkflow.core.errors import ShrinkflowError
from shrinkflow.data.prepare import write_prepared
from shrinkflow.data.prepared import load_prepared
from shrinkflow.data.sources import (
    source_from_arrays,
)


def test_prepared_images_are_memory_mapped(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (40, 1, 8, 8), dtype=np.uint8)
    source = source_from_arrays(images, np.arange(40) % 4, list("abcd"))
    write_prepared(tmp_path, source, {"train": np.arange(30), "val": np.arange(30, 35),
                                      "test": np.arange(35, 40)}, "synthetic")
    x = load_prepared(tmp_path).train[0]
    # the tensor's memory lies inside a mapping of train_x.npy, not in a copy on the heap
    address = x.untyped_storage().data_ptr()
    mapped = [line.split()[-1] for line in open("/proc/self/maps")
              if int(line.split("-")[0], 16) <= address < int(line.split()[0].split("-")[1], 16)]
    assert mapped and mapped[0].endswith("train_x.npy"), mapped


def test_load_prepared_missing_says_run_prepare(tmp_path):
    with pytest.raises(ShrinkflowError, match="prepare"):
        load_prepared(tmp_path)
