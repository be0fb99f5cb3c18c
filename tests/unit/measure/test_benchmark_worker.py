"""The benchmark worker (shrinkflow.measure.benchmark_worker): each kind of model file loaded,
described with the fp32 counts and timed, and the peak memory seen."""

from __future__ import annotations

import mmap

import pytest
import torch

from shrinkflow.compress.quantize import save_torch_int8
from shrinkflow.core.errors import ShrinkflowError
from shrinkflow.measure.benchmark_job import Job
from shrinkflow.measure.benchmark_worker import LoadedModel, PeakRss
from shrinkflow.model_files.export_onnx import export_onnx
from shrinkflow.nets.zoo import count_macs, count_params

SHAPE = [1, 8, 8]  # the shape of tiny_pt's images (conftest.py)


def test_peak_rss_sees_an_allocation():
    memory = PeakRss()
    memory.start()
    # fresh pages from the kernel (a torch tensor may reuse memory an earlier test in this worker
    # freed, which is already resident and raises no peak)
    block = mmap.mmap(-1, 80 * 2**20)
    megabyte = b"\1" * 2**20  # touched 1 MB at a time: one 80 MB bytes object would double the
    for _ in range(80):  # peak whenever the heap has no free 80 MB already resident (it failed
        block.write(megabyte)  # with 160 MB in a full fast-loop run)
    extra = memory.stop()
    block.close()
    assert 70 < extra < 120


def test_loaded_model_torch_describes_the_file_and_times_each_batch_size(tiny_pt):
    path, model = tiny_pt
    loaded = LoadedModel(Job("tiny", str(path), SHAPE, [4, 1], repeats=5, warmup=1, threads=1))
    d = loaded.describe()
    assert (d["runtime"], d["precision"], d["device"], d["threads"]) == ("torch", "fp32", "cpu", 1)
    assert d["params"] == count_params(model) and d["macs"] == count_macs(model, tuple(SHAPE))
    assert d["file_bytes"] == path.stat().st_size
    assert sorted(d["rss_mb"]) == ["1", "4"] and d["torch_version"] == torch.__version__
    assert len(loaded.time(4, 3)) == 3
    assert loaded._inputs[4].shape == (4, *SHAPE) and loaded._inputs[4].dtype == torch.float32


def test_loaded_model_onnx_reads_counts_from_metadata(tiny_pt, tmp_path):
    _, model = tiny_pt
    onnx_path = tmp_path / "tiny.onnx"
    export_onnx(model, tuple(SHAPE), onnx_path)
    loaded = LoadedModel(Job("tiny_onnx", str(onnx_path), SHAPE, [2], repeats=3, warmup=1,
                             threads=1))
    d = loaded.describe()
    assert (d["runtime"], d["precision"], d["device"]) == ("onnxruntime", "fp32", "cpu")
    assert d["params"] == count_params(model) and d["macs"] == count_macs(model, (1, 8, 8))
    assert type(loaded._inputs[2]).__module__ == "numpy"  # converted once, outside the timing


def test_loaded_model_torch_int8_reports_fp32_counts(tiny_pt, tmp_path):
    _, model = tiny_pt
    spec = {"arch": "cnn", "widths": [4, 8], "depth": 1, "width_mult": 1.0, "in_channels": 1,
            "num_classes": 3, "mean": [0.5], "std": [0.25]}
    calib = torch.randint(0, 256, (16, *SHAPE), dtype=torch.uint8)
    path = tmp_path / "int8.pt"
    save_torch_int8(path, model, spec, calib)
    d = LoadedModel(Job("q", str(path), SHAPE, [2], repeats=3, warmup=1)).describe()
    assert (d["runtime"], d["precision"], d["device"]) == ("torch_int8", "int8", "cpu")
    assert d["params"] == count_params(model) and d["macs"] == count_macs(model, (1, 8, 8))


def test_loaded_model_cuda_without_gpu_names_the_param(tiny_pt, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ShrinkflowError, match="benchmark.device is 'cuda'"):
        LoadedModel(Job("tiny", str(tiny_pt[0]), SHAPE, [1], device="cuda"))


def test_loaded_model_checks_the_input_shape(tiny_pt):
    with pytest.raises(ShrinkflowError, match=r"tiny\.pt: the model takes 1x\?x\? images"):
        LoadedModel(Job("tiny", str(tiny_pt[0]), [3, 8, 8], [1]))
