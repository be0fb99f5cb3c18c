"""export_teacher: the teacher as an fp32 ONNX file, so it is benchmarked in ONNX Runtime too.

Compressed models run in ONNX Runtime, the teacher only in PyTorch eager: their ratio mixes the
runtime's gain with compression's. With models/teacher.onnx both are measured (teacher torch ->
teacher ORT is the runtime; teacher ORT -> a compressed ORT model is the compression). A stage of
its own, reading only ``quantize.opset``, so other quantize settings never re-export the teacher.
Checks the written file against the PyTorch teacher on the test split (logits and agreement).
"""

from pathlib import Path

from shrinkflow.artifacts import check_role, commit_outputs, read_json, require_inputs
from shrinkflow.data import load_prepared
from shrinkflow.errors import ShrinkflowError, run_stage
from shrinkflow.onnx_export import export_onnx, export_parity
from shrinkflow.params import load_section
from shrinkflow.runtime import open_model

DATA_DIR = "data/prepared"
TEACHER_IN = "models/teacher.pt"
ONNX_OUT = Path("models/teacher.onnx")
METRICS_OUT = "metrics/export_teacher.json"
MAX_ABS_DIFF = 1e-3  # fp32 export: logits agree to float precision (measured ~1e-5 on digits)


def main() -> None:
    opset = load_section("quantize").opset
    require_inputs("export_teacher", {TEACHER_IN: "train_teacher",
                                      f"{DATA_DIR}/meta.json": "prepare"})
    meta = read_json(f"{DATA_DIR}/meta.json")
    teacher = open_model(TEACHER_IN, meta["shape"], meta["num_classes"])
    check_role(teacher.meta, "teacher", TEACHER_IN)
    x, _ = load_prepared(DATA_DIR).test
    with commit_outputs() as out:
        onnx_path = out.file(ONNX_OUT)
        export_onnx(teacher.module, tuple(meta["shape"]), onnx_path, opset)
        exported = open_model(onnx_path, meta["shape"], meta["num_classes"])
        parity = export_parity(teacher.predict(x), exported.predict(x))
        if parity["max_abs_diff"] > MAX_ABS_DIFF:
            raise ShrinkflowError(
                f"{ONNX_OUT}: exported teacher differs from {TEACHER_IN} by up to "
                f"{parity['max_abs_diff']:.2e} in logits (expected <= {MAX_ABS_DIFF:g}); "
                "nothing was replaced"
            )
        out.json(METRICS_OUT, {
            "teacher_onnx_max_abs_diff": round(parity["max_abs_diff"], 8),
            "teacher_onnx_agreement": round(parity["agreement"], 6),
            "teacher_onnx_bytes": onnx_path.stat().st_size,
        })
    print(f"[export_teacher] {TEACHER_IN} -> {ONNX_OUT} (opset {opset}): max |diff| "
          f"{parity['max_abs_diff']:.2e}, agreement {parity['agreement']:.2%} on {len(x)} test "
          "images")


if __name__ == "__main__":
    run_stage(main)
