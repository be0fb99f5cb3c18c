"""The benchmark worker (shrinkflow.measure.benchmark_worker): each kind of model file loaded,
described with the fp32 counts and timed, and the peak memory seen; a detector timed with its
post-processing, at batch 1 and 2, images/s counting images."""

from __future__ import annotations

import mmap

import numpy as np
import pytest
import torch
from tiny_detectors import untrained_detector

from shrinkflow.compress.quantize import save_torch_int8
from shrinkflow.core.errors import ShrinkflowError
from shrinkflow.measure.benchmark import result_row
from shrinkflow.measure.benchmark_job import Job
from shrinkflow.measure.benchmark_worker import LoadedModel, PeakRss
from shrinkflow.model_files.export_detector import export_detector
from shrinkflow.model_files.export_onnx import export_onnx
from shrinkflow.model_files.pt import save_model
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
    assert loaded._timed[4].inputs.shape == (4, *SHAPE)
    assert loaded._timed[4].inputs.dtype == torch.float32 and "calls_per_batch" not in d


def test_loaded_model_onnx_reads_counts_from_metadata(tiny_pt, tmp_path):
    _, model = tiny_pt
    onnx_path = tmp_path / "tiny.onnx"
    export_onnx(model, tuple(SHAPE), onnx_path)
    loaded = LoadedModel(Job("tiny_onnx", str(onnx_path), SHAPE, [2], repeats=3, warmup=1,
                             threads=1))
    d = loaded.describe()
    assert (d["runtime"], d["precision"], d["device"]) == ("onnxruntime", "fp32", "cpu")
    assert d["params"] == count_params(model) and d["macs"] == count_macs(model, (1, 8, 8))
    # converted once, outside the timing
    assert type(loaded._timed[2].inputs).__module__ == "numpy"


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


# --- detection: images in, final boxes out, post-processing included ----------------------------

DETECTOR_SHAPE = [1, 16, 16]


@pytest.fixture
def detector_files(tmp_path):
    """A tiny FCOS .pt and its ONNX file (NMS inside, one image per call)."""
    model, spec = untrained_detector([4, 8], DETECTOR_SHAPE[1])
    save_model(tmp_path / "d.pt", model, spec, role="teacher")
    export_detector(model, spec, tmp_path / "d.onnx")
    return tmp_path / "d.pt", tmp_path / "d.onnx"


def timed_detector(path, sizes=(1, 2)) -> tuple[LoadedModel, dict]:
    loaded = LoadedModel(Job("det", str(path), DETECTOR_SHAPE, list(sizes), repeats=2, warmup=1,
                             threads=1))
    return loaded, loaded.describe()


def images_per_second(loaded: LoadedModel, described: dict, batch: int) -> int:
    """Time ``batch``: the row's images/s counts images; returns its calls_per_batch."""
    times = loaded.time(batch, 3)
    row = result_row(loaded.job, described, batch, [times])
    assert row["ips"] == pytest.approx(batch * len(times) / (sum(times) / 1000), rel=1e-3)
    return row["calls_per_batch"]


def test_a_detector_pt_times_one_batched_call_with_its_boxes(detector_files):
    loaded, d = timed_detector(detector_files[0])
    assert (d["runtime"], d["calls_per_batch"]) == ("torch", {"1": 1, "2": 1})
    out = loaded._timed[2].call()  # what is timed: FCOS's final detections, NMS included
    assert len(out) == 2 and all({"boxes", "scores", "labels"} <= set(o) for o in out)
    assert len(out[0]["boxes"]) > 0
    assert [images_per_second(loaded, d, b) for b in (1, 2)] == [1, 1]


def test_an_onnx_detector_times_one_call_per_image(detector_files):
    loaded, d = timed_detector(detector_files[1])
    assert (d["runtime"], d["calls_per_batch"]) == ("onnxruntime", {"1": 1, "2": 2})
    out = loaded._timed[2].call()
    assert len(out) == 2 and all(len(o) == 3 for o in out)  # boxes, scores, labels per image
    assert all(image.shape == tuple(DETECTOR_SHAPE) for image in loaded._timed[2].inputs)
    assert [images_per_second(loaded, d, b) for b in (1, 2)] == [1, 2]


def test_a_classifier_row_has_no_detection_column(tiny_pt):
    loaded = LoadedModel(Job("tiny", str(tiny_pt[0]), SHAPE, [2], repeats=2, warmup=1,
                             threads=1))
    row = result_row(loaded.job, loaded.describe(), 2, [loaded.time(2, 2)])
    assert "calls_per_batch" not in row and loaded._timed[2].model_calls == 1


def test_detectors_are_timed_on_the_prepared_test_images(detector_files, tmp_path):
    """Random pixels would leave a trained detector's NMS nothing to do: with ``scenes`` set,
    batch B is the first B test images (cycled: 3 of a 2-image test split)."""
    from shrinkflow.data.prepare_detection import read_detection, write_detection
    from shrinkflow.data.prepared_boxes import load_box_split
    from shrinkflow.params.prepare import PrepareParams

    folder = tmp_path / "prepared"
    write_detection(folder, read_detection(PrepareParams(
        task="detection", source="scenes", image_size=16,
        scenes={"train": 4, "val": 2, "test": 2, "max_digits": 1})), "scenes")
    test, _ = load_box_split(folder, "test")
    loaded = LoadedModel(Job("det", str(detector_files[1]), DETECTOR_SHAPE, [3], repeats=2,
                             warmup=1, threads=1, scenes=str(folder)))
    timed = loaded._timed[3].inputs
    for image, row in zip(timed, [0, 1, 0], strict=True):
        assert np.array_equal(image, test.image(row))
