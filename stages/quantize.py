"""quantize: fp32 ONNX export plus two int8 flavours (ONNX Runtime and PyTorch FX) of one model.

Reads models/pruned.pt or models/student.pt (``quantize.input``), calibrates on a seeded sample
of the train split, and checks every converted model against the fp32 one on the test split,
running the saved files through ``model_files.open.open_model`` exactly as evaluate and benchmark
will. ``quantize.mode`` picks static, dynamic or qat for the ONNX Runtime model: qat first
fine-tunes
a copy of the model with fake quantization and distillation from models/teacher.pt
(``quantize.qat``), then quantizes the tuned weights, and checks the int8 file against the
fake-quantized model too. The PyTorch int8 model is always static PTQ of the input model
(PyTorch's dynamic int8 only touches nn.Linear: no gain for CNNs).

On detection data (``prepare.task: detection``): the fp32 detector file with its
post-processing (model_files.export_detector, checked box for box as export_onnx checks it),
ONNX Runtime static int8 of its convolutions only and PyTorch FX int8 of its backbone only
(compress.quantize_detection); box decoding, score threshold, NMS and top-k stay fp32 in both,
and the head's GroupNorm too (the whole head in the PyTorch file). Test mAP of each file, through
open_model as evaluate runs it. Only mode static: qat and dynamic stop in one line first.
"""

import time
from pathlib import Path
from typing import Any

import torch

from shrinkflow.compress.distill import KDLoss
from shrinkflow.compress.quantize import (
    parity_metrics,
    qat_finetune,
    quantize_onnx_dynamic,
    quantize_onnx_static,
    quantize_qat_onnx,
    save_torch_int8,
    select_calibration,
)
from shrinkflow.compress.quantize_detection import (
    calibration_images,
    check_detection_mode,
    detect_all,
    detection_quantize_metrics,
    quantize_detector_onnx,
    save_torch_int8_detector,
)
from shrinkflow.compress.teacher_ensemble import load_teacher, teacher_files
from shrinkflow.core.errors import ShrinkflowError, run_stage
from shrinkflow.core.outputs import commit_outputs, read_json
from shrinkflow.core.tasks import DETECTION, prepared_task
from shrinkflow.data.prepared import load_prepared
from shrinkflow.data.prepared_boxes import load_box_split
from shrinkflow.measure.metrics import accuracy, logit_parity
from shrinkflow.model_files.export_detector import box_parity, check_box_parity, export_detector
from shrinkflow.model_files.export_onnx import export_onnx
from shrinkflow.model_files.open import open_model
from shrinkflow.model_files.pt import check_role
from shrinkflow.nets.detectors import detector_label
from shrinkflow.params.load import load_section
from shrinkflow.params.quantize import QuantizeParams
from shrinkflow.params.teacher import TeacherParams
from shrinkflow.training.loop import predict, seed_everything

DATA_DIR = "data/prepared"
INPUTS = {"pruned": ("models/pruned.pt", "prune"), "student": ("models/student.pt", "distill")}
TEACHER_IN = "models/teacher.pt"  # mode qat: distils from it during the fine-tune ...
MEMBERS_DIR = "models/teachers"  # ... and from the extra ensemble members, if any
FP32_ONNX_OUT = Path("models/pruned.onnx")
INT8_ONNX_OUT = Path("models/quantized.onnx")
INT8_TORCH_OUT = Path("models/quantized_torch.pt")
INT8_TORCH_ROLE = "quantized_torch"  # meta.role of the file: its name in models.yaml
METRICS_OUT = "metrics/quantize.json"


def input_path(p: QuantizeParams) -> str:
    """The model file ``quantize.input`` names, which must exist."""
    model_path, maker = INPUTS[p.input]
    if not Path(model_path).is_file():
        raise ShrinkflowError(
            f"quantize.input = {p.input!r} needs {model_path}, which does not exist "
            f"(the '{maker}' stage writes it)"
        )
    return model_path


def quantize_metrics(p: QuantizeParams, files: tuple[Path, Path, Path], m: dict[str, float],
                     measured: dict[str, Any], seconds: tuple[float, float]) -> dict[str, Any]:
    """metrics/quantize.json for either task: the settings, the files' sizes and the fp32
    export's parity around ``measured`` (the task's own quality keys), in one key order.
    ``files``: fp32 ONNX, int8 ONNX, int8 torch; ``seconds``: ORT's and torch's quantization."""
    fp32_bytes, int8_bytes, torch_bytes = (f.stat().st_size for f in files)
    return {
        "quantize_input": p.input,
        "quantize_mode": p.mode,
        "quantize_fp32_onnx_bytes": fp32_bytes,
        "quantize_int8_onnx_bytes": int8_bytes,
        "quantize_size_ratio": round(int8_bytes / fp32_bytes, 4),
        "quantize_onnx_max_abs_diff": round(m["onnx_max_abs_diff"], 8),
        "quantize_onnx_agreement": round(m["onnx_agreement"], 6),
        **measured,
        "quantize_torch_bytes": torch_bytes,
        "quantize_calibration_seconds": round(seconds[0], 3),
        "quantize_torch_seconds": round(seconds[1], 3),
    }


def main() -> None:
    p = load_section(QuantizeParams)
    if prepared_task(DATA_DIR) == DETECTION:
        quantize_detection(p)
        return
    model_path = input_path(p)
    meta = read_json(f"{DATA_DIR}/meta.json")
    source = open_model(model_path, meta["shape"], meta["num_classes"])  # checked against data
    check_role(source.meta, p.input, model_path)
    model, spec = source.module, source.spec
    teacher = None
    if p.mode == "qat":
        # every teacher member (teacher.ensemble_seeds is the only teacher key read)
        seeds = load_section(TeacherParams).ensemble_seeds
        teachers = teacher_files(TEACHER_IN, MEMBERS_DIR, seeds)
        missing = [path for path in teachers if not Path(path).is_file()]
        if missing:
            raise ShrinkflowError(f"quantize.mode = 'qat' needs {', '.join(missing)} (the "
                                  f"distillation teacher), which does not exist (the "
                                  f"'{teachers[missing[0]]}' stage writes it)")
        # one member itself, or the ensemble's mean soft targets at the fine-tune's T
        teacher, _ = load_teacher(list(teachers), p.qat.kd.T)
    data = load_prepared(DATA_DIR)
    calibration = select_calibration(data.train[0], p.calibration_samples, p.seed)
    shape = tuple(meta["shape"])
    print(f"[quantize] {model_path}: {spec['arch']}, {len(calibration)} calibration "
          f"images from train, mode {p.mode}")

    qat, qat_metrics = None, {}
    if teacher is not None:
        q = p.qat
        seed_everything(q.train.seed)
        print(f"[quantize] QAT: {q.train.epochs} epoch(s) with fake quantization, KD T {q.kd.T} "
              f"alpha {q.kd.alpha}")
        qat = qat_finetune(
            model, shape, data.train, data.val, q.train,
            loss_fn=KDLoss(teacher, q.kd.T, q.kd.alpha, q.train.label_smoothing),
            reduce_range=p.reduce_range, params_key="quantize.qat.train",
            loss_params={"quantize.qat.kd.T": q.kd.T, "quantize.qat.kd.alpha": q.kd.alpha})

    with commit_outputs() as out:  # the three models and the metrics land together
        fp32_onnx, int8_onnx = out.file(FP32_ONNX_OUT), out.file(INT8_ONNX_OUT)
        int8_torch = out.file(INT8_TORCH_OUT)
        export_onnx(model, shape, fp32_onnx, p.opset)
        print(f"[quantize] fp32 ONNX -> {FP32_ONNX_OUT}")
        start = time.perf_counter()
        if qat is not None:
            quantize_qat_onnx(qat, int8_onnx, calibration, p.per_channel, p.reduce_range,
                              p.calibration_method, p.opset)
        elif p.mode == "static":
            quantize_onnx_static(fp32_onnx, int8_onnx, calibration, p.per_channel,
                                 p.reduce_range, p.calibration_method)
        else:
            quantize_onnx_dynamic(fp32_onnx, int8_onnx, p.per_channel, p.reduce_range)
        ort_seconds = time.perf_counter() - start
        print(f"[quantize] ONNX Runtime int8 ({p.mode}) -> {INT8_ONNX_OUT} in {ort_seconds:.1f}s")
        start = time.perf_counter()
        save_torch_int8(int8_torch, model, spec, calibration, role=INT8_TORCH_ROLE,
                        source=model_path, calibration_samples=len(calibration))
        torch_seconds = time.perf_counter() - start
        print(f"[quantize] PyTorch FX int8 (x86) -> {INT8_TORCH_OUT} in "
              f"{torch_seconds:.1f}s")

        x, y = data.test
        fp32, onnx_fp32, onnx_int8, torch_int8 = (  # parity of the files as written
            open_model(path, shape, meta["num_classes"]).predict(x)
            for path in (model_path, fp32_onnx, int8_onnx, int8_torch)
        )
        m = parity_metrics(fp32, onnx_fp32, onnx_int8, torch_int8, y)
        if qat is not None:  # the int8 file against the fake-quantized model it came from
            fake_quant = predict(qat.fake_quant, x, device=torch.device("cpu"))
            fq_acc = accuracy(fake_quant, y)
            qat_metrics = {
                "quantize_qat_epochs": p.qat.train.epochs,
                "quantize_qat_seconds": round(qat.seconds, 2),
                "quantize_qat_val_acc": qat.history[-1]["val_acc"] if qat.history else 0.0,
                "quantize_qat_fake_quant_test_acc": round(fq_acc, 6),
                "quantize_qat_int8_agreement": round(
                    logit_parity(fake_quant, onnx_int8)["agreement"], 6),
                "quantize_qat_int8_gap_points": round(100 * (fq_acc - m["int8_test_acc"]), 4),
            }
        metrics = {**quantize_metrics(p, (fp32_onnx, int8_onnx, int8_torch), m, {
            "quantize_fp32_test_acc": round(m["fp32_test_acc"], 6),
            "quantized_test_acc": round(m["int8_test_acc"], 6),
            "quantize_acc_drop_points": m["acc_drop_points"],
            "quantize_int8_agreement": round(m["int8_agreement"], 6),
            "quantized_torch_test_acc": round(m["torch_int8_test_acc"], 6),
            "quantized_torch_agreement": round(m["torch_int8_agreement"], 6),
        }, (ort_seconds, torch_seconds)), **qat_metrics}
        out.json(METRICS_OUT, metrics)
    fp32_bytes, int8_bytes = (metrics["quantize_fp32_onnx_bytes"],
                              metrics["quantize_int8_onnx_bytes"])
    print(f"[quantize] ONNX fp32 vs torch: max |diff| {m['onnx_max_abs_diff']:.2e}, agreement "
          f"{m['onnx_agreement']:.2%}")
    print(f"[quantize] ORT int8: {fp32_bytes:,} -> {int8_bytes:,} bytes "
          f"({metrics['quantize_size_ratio']:.2f}x), test acc {m['fp32_test_acc']:.2%} -> "
          f"{m['int8_test_acc']:.2%} (drop {m['acc_drop_points']:.2f} points), agreement "
          f"{m['int8_agreement']:.2%}")
    if qat_metrics:
        print(f"[quantize] QAT: fake-quantized test acc "
              f"{qat_metrics['quantize_qat_fake_quant_test_acc']:.2%}, int8 ONNX agrees with it on "
              f"{qat_metrics['quantize_qat_int8_agreement']:.2%} (gap "
              f"{qat_metrics['quantize_qat_int8_gap_points']:.2f} points)")
    print(f"[quantize] torch_int8: test acc {m['torch_int8_test_acc']:.2%}, agreement "
          f"{m['torch_int8_agreement']:.2%}, {metrics['quantize_torch_bytes']:,} bytes "
          f"-> {METRICS_OUT}")


def quantize_detection(p: QuantizeParams) -> None:
    """``prepare.task: detection``: the fp32 detector file with its post-processing
    (export_detector, checked box for box as export_onnx checks it), int8 of its convolutions
    for ONNX Runtime and of its backbone for PyTorch (compress.quantize_detection), each int8
    file's test mAP through open_model as evaluate runs it."""
    check_detection_mode(p.mode)  # before anything is read or written
    model_path = input_path(p)
    source = open_model(model_path)
    check_role(source.meta, p.input, model_path)
    if source.detect is None:
        raise ShrinkflowError(f"{model_path}: a classifier, but {DATA_DIR} holds detection data "
                              "(prepare.task: detection); expected a detector")
    train, meta = load_box_split(DATA_DIR, "train")
    test, _ = load_box_split(DATA_DIR, "test")
    calibration = calibration_images(train, p.calibration_samples, p.seed)
    images = [test.image(i) for i in range(len(test))]
    print(f"[quantize] {model_path}: {detector_label(source.spec)}, {len(calibration)} "
          "calibration images from "
          f"train, mode {p.mode} (int8: convolutions; fp32: decoding, threshold, NMS)")
    with commit_outputs() as out:  # the three models and the metrics land together
        fp32_onnx, int8_onnx = out.file(FP32_ONNX_OUT), out.file(INT8_ONNX_OUT)
        int8_torch = out.file(INT8_TORCH_OUT)
        export_detector(source.module, source.spec, fp32_onnx, p.opset)
        fp32, onnx_fp32 = detect_all(source, images), detect_all(open_model(fp32_onnx), images)
        check_box_parity(box_parity(fp32, onnx_fp32), FP32_ONNX_OUT, model_path)
        print(f"[quantize] fp32 ONNX (with NMS) -> {FP32_ONNX_OUT}")
        start = time.perf_counter()
        quantize_detector_onnx(fp32_onnx, int8_onnx, calibration, p.per_channel,
                               p.reduce_range, p.calibration_method)
        ort_seconds = time.perf_counter() - start
        print(f"[quantize] ONNX Runtime int8 (static, convolutions) -> {INT8_ONNX_OUT} in "
              f"{ort_seconds:.1f}s")
        start = time.perf_counter()
        save_torch_int8_detector(int8_torch, source.module, source.spec, calibration,
                                 role=INT8_TORCH_ROLE, source=model_path,
                                 calibration_samples=len(calibration))
        torch_seconds = time.perf_counter() - start
        print(f"[quantize] PyTorch FX int8 (x86, backbone) -> {INT8_TORCH_OUT} in "
              f"{torch_seconds:.1f}s")
        m = detection_quantize_metrics(
            test.truths(), meta["classes"], fp32, onnx_fp32,
            detect_all(open_model(int8_onnx), images), detect_all(open_model(int8_torch), images))
        metrics = quantize_metrics(p, (fp32_onnx, int8_onnx, int8_torch), m, {
            "quantize_fp32_test_map": m["fp32_test_map"],
            "quantized_test_map": m["int8_test_map"],
            "quantize_map_drop_points": m["map_drop_points"],
            "quantize_int8_agreement": round(m["int8_agreement"], 6),
            "quantized_torch_test_map": m["torch_int8_test_map"],
            "quantized_torch_agreement": round(m["torch_int8_agreement"], 6),
        }, (ort_seconds, torch_seconds))
        out.json(METRICS_OUT, metrics)
    fp32_bytes, int8_bytes = (metrics["quantize_fp32_onnx_bytes"],
                              metrics["quantize_int8_onnx_bytes"])
    print(f"[quantize] ONNX fp32 vs torch: same boxes on {m['onnx_agreement']:.2%} of "
          f"{len(images)} test images, max |diff| {m['onnx_max_abs_diff']:.2e} px")
    print(f"[quantize] ORT int8: {fp32_bytes:,} -> {int8_bytes:,} bytes "
          f"({metrics['quantize_size_ratio']:.2f}x), test mAP {m['fp32_test_map']:.4f} -> "
          f"{m['int8_test_map']:.4f} (drop {m['map_drop_points']:.2f} points), same boxes on "
          f"{m['int8_agreement']:.2%}")
    print(f"[quantize] torch_int8: test mAP {m['torch_int8_test_map']:.4f}, same boxes on "
          f"{m['torch_int8_agreement']:.2%}, {metrics['quantize_torch_bytes']:,} bytes "
          f"-> {METRICS_OUT}")


if __name__ == "__main__":
    run_stage(main)
