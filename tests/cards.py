"""A complete model card for a tiny model, as the select stage writes one (tests of the card and
of the predict command)."""

from __future__ import annotations

from shrinkflow.model_files.card import make_card


def tiny_card(meta: dict, **changes) -> dict:
    card = make_card(
        model="student_onnx", made_from="models/student.onnx", file_format="onnx",
        runtime="onnxruntime", precision="fp32", classes=[f"band{c}" for c in meta["classes"]],
        input_shape=meta["shape"], mean=meta["mean"], std=meta["std"], accuracy=0.9,
        teacher_accuracy=0.95, drop_points=5.0, test_images=64,
        data={"data_source": "synthetic"},
        latency={"runtime": "onnxruntime fp32", "threads": 1,
                 "p50_ms": [{"batch_size": 1, "ms": 0.1}]},
        size={"params": 1, "macs": 1}, pipeline={"commit": None, "modified": None})
    card.update(changes)
    return card
