"""evaluate: test-set metrics for one model (one DVC foreach item per model of models.yaml).

Usage: python stages/evaluate.py NAME MODEL_FILE
Any model file (.pt fp32 or int8, .onnx) opens through shrinkflow.model_files.open, checked against
the
data's image shape and class count first. Writes metrics/eval_NAME.json (keys NAME_*),
metrics/confusion_NAME.csv (one row per test image, for DVC's confusion template) and
metrics/per_class_NAME.csv. On detection data (``prepare.task: detection``): a detector's COCO
mAP, AP per class and its matched boxes as the confusion list (measure.evaluate_detection).
"""

import re
import sys
from pathlib import Path

from shrinkflow.core.errors import ShrinkflowError, run_stage
from shrinkflow.core.outputs import commit_outputs, read_json
from shrinkflow.core.tasks import DETECTION, prepared_task
from shrinkflow.data.prepared import load_prepared
from shrinkflow.data.prepared_boxes import load_box_split
from shrinkflow.measure.evaluate import write_evaluation
from shrinkflow.measure.evaluate_detection import write_detection_evaluation
from shrinkflow.model_files.open import open_model
from shrinkflow.params.evaluate import EvaluateParams
from shrinkflow.params.load import load_section

DATA_DIR = "data/prepared"
METRICS_DIR = Path("metrics")


def main() -> None:
    if len(sys.argv) != 3 or not re.fullmatch(r"[A-Za-z0-9_]+", sys.argv[1]):
        raise ShrinkflowError(
            "usage: python stages/evaluate.py NAME MODEL_FILE (NAME: [A-Za-z0-9_])"
        )
    name, model_path = sys.argv[1], Path(sys.argv[2])
    p = load_section(EvaluateParams)
    if prepared_task(DATA_DIR) == DETECTION:
        evaluate_detector(name, model_path)
        return
    meta = read_json(f"{DATA_DIR}/meta.json")  # small: check the model fits before loading data
    model = open_model(model_path, meta["shape"], meta["num_classes"])
    data = load_prepared(DATA_DIR)
    x, y = data.test
    with commit_outputs() as out:
        m = write_evaluation(out, METRICS_DIR, name, model, x, y, data.meta["classes"],
                             p.batch_size, p.ece_bins)
    print(f"[evaluate] {name} ({model.runtime} {model.precision}): acc {m['acc']:.2%}  "
          f"macro-F1 {m['macro_f1']:.4f}  loss {m['loss']:.4f}  ECE {m['ece']:.4f}  "
          f"params {model.params}  MACs {model.macs}")


def evaluate_detector(name: str, model_path: Path) -> None:
    """``prepare.task: detection``: COCO mAP, AP per class, matched boxes
    (measure.evaluate_detection)."""
    model = open_model(model_path)
    if model.detect is None:
        raise ShrinkflowError(f"{model_path}: a classifier, but data/prepared holds detection "
                              "data (prepare.task: detection); expected a detector")
    test, meta = load_box_split(DATA_DIR, "test")
    with commit_outputs() as out:
        m = write_detection_evaluation(out, METRICS_DIR, name, model, test, meta["classes"])
    print(f"[evaluate] {name} ({model.runtime} {model.precision}): mAP {m['map']:.4f}  "
          f"mAP@.5 {m['map_50']:.4f}  mAP@.75 {m['map_75']:.4f}  params {model.params}")


if __name__ == "__main__":
    run_stage(main)
