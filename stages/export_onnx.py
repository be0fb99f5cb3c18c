"""export_onnx@NAME: an fp32 ONNX form of the teacher or the distilled student (a foreach item
each).

    python stages/export_onnx.py teacher   # models/teacher.pt -> models/teacher.onnx
    python stages/export_onnx.py student   # models/student.pt -> models/student.onnx

Compressed models run in ONNX Runtime, the teacher only in PyTorch eager: their ratio mixes the
runtime's gain with compression's. With models/teacher.onnx both are measured (teacher torch ->
teacher ORT is the runtime; teacher ORT -> a compressed ORT model is the compression). The
student's ONNX form is a candidate for the final model in its own right (quantize exports only
the model it quantizes). Each item reads only ``quantize.opset``, so other quantize settings
never re-export. Checks the written file against the PyTorch model on the test split.

On detection data (``prepare.task: detection``) it exports the detector with its
post-processing (model_files.export_detector: final boxes out, one image per call), checked box
for box on the test images; metrics: the share of images with the same boxes and the largest
coordinate difference in pixels.
"""

import sys
from pathlib import Path

from shrinkflow.core.errors import ShrinkflowError, run_stage
from shrinkflow.core.metric_keys import model_key
from shrinkflow.core.outputs import commit_outputs, read_json, require_inputs
from shrinkflow.core.tasks import DETECTION, prepared_task
from shrinkflow.data.prepared import load_prepared
from shrinkflow.data.prepared_boxes import load_box_split
from shrinkflow.measure.metrics import logit_parity
from shrinkflow.model_files.export_detector import (
    box_parity,
    check_box_parity,
    export_detector,
)
from shrinkflow.model_files.export_onnx import FP32_MAX_ABS_DIFF, export_onnx
from shrinkflow.model_files.open import open_model
from shrinkflow.model_files.pt import check_role
from shrinkflow.params.load import load_section
from shrinkflow.params.quantize import QuantizeParams

DATA_DIR = "data/prepared"
SOURCES = {"teacher": "train_teacher", "student": "distill"}  # model -> the stage that writes it


def export_metrics(name: str, parity: dict[str, float], onnx_path: Path) -> dict[str, float]:
    """metrics/export_NAME.json: the parity and the file's size, under the ONNX model's name in
    models.yaml (NAME_onnx)."""
    onnx_name = f"{name}_onnx"
    return {model_key(onnx_name, "max_abs_diff"): round(parity["max_abs_diff"], 8),
            model_key(onnx_name, "agreement"): round(parity["agreement"], 6),
            model_key(onnx_name, "bytes"): onnx_path.stat().st_size}


def main() -> None:
    if len(sys.argv) != 2 or sys.argv[1] not in SOURCES:
        raise ShrinkflowError(f"usage: python stages/export_onnx.py NAME (NAME: one of "
                              f"{', '.join(SOURCES)})")
    name = sys.argv[1]
    source, onnx_out = f"models/{name}.pt", Path(f"models/{name}.onnx")
    metrics_out = f"metrics/export_{name}.json"
    opset = load_section(QuantizeParams).opset
    require_inputs(f"export_onnx@{name}",
                   {source: SOURCES[name], f"{DATA_DIR}/meta.json": "prepare"})
    if prepared_task(DATA_DIR) == DETECTION:
        export_detection(name, source, onnx_out, metrics_out, opset)
        return
    meta = read_json(f"{DATA_DIR}/meta.json")
    model = open_model(source, meta["shape"], meta["num_classes"])
    check_role(model.meta, name, source)
    x, _ = load_prepared(DATA_DIR).test
    with commit_outputs() as out:
        onnx_path = out.file(onnx_out)
        export_onnx(model.module, tuple(meta["shape"]), onnx_path, opset)
        exported = open_model(onnx_path, meta["shape"], meta["num_classes"])
        parity = logit_parity(model.predict(x), exported.predict(x))
        if parity["max_abs_diff"] > FP32_MAX_ABS_DIFF:
            raise ShrinkflowError(
                f"{onnx_out}: exported model differs from {source} by up to "
                f"{parity['max_abs_diff']:.2e} in logits (expected <= {FP32_MAX_ABS_DIFF:g}); "
                "nothing was replaced"
            )
        out.json(metrics_out, export_metrics(name, parity, onnx_path))
    print(f"[export_onnx@{name}] {source} -> {onnx_out} (opset {opset}): max |diff| "
          f"{parity['max_abs_diff']:.2e}, agreement {parity['agreement']:.2%} on {len(x)} test "
          "images")


def export_detection(name: str, source: str, onnx_out: Path, metrics_out: str,
                     opset: int) -> None:
    """``prepare.task: detection``: the detector with its post-processing (export_detector),
    checked box for box against PyTorch on the test images."""
    model = open_model(source)
    check_role(model.meta, name, source)
    test, _ = load_box_split(DATA_DIR, "test")
    images = [test.image(i) for i in range(len(test))]
    with commit_outputs() as out:
        onnx_path = out.file(onnx_out)
        export_detector(model.module, model.spec, onnx_path, opset)
        exported = open_model(onnx_path)
        parity = box_parity([model.detect(x) for x in images], [exported.detect(x) for x in images])
        check_box_parity(parity, onnx_out, source)
        out.json(metrics_out, export_metrics(name, parity, onnx_path))
    print(f"[export_onnx@{name}] {source} -> {onnx_out} (opset {opset}, with NMS): same boxes "
          f"on {parity['agreement']:.2%} of {len(images)} test images, max |diff| "
          f"{parity['max_abs_diff']:.2e} px")


if __name__ == "__main__":
    run_stage(main)
