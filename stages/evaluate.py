"""evaluate: test-set metrics for one model (one DVC foreach item per model of models.yaml).

Usage: python stages/evaluate.py NAME MODEL_FILE
Any model file (.pt fp32 or int8, .onnx) opens through shrinkflow.model_files.open, checked against
the
data's image shape and class count first. Writes metrics/eval_NAME.json (keys NAME_*),
metrics/confusion_NAME.csv (one row per test image, for DVC's confusion template) and
metrics/per_class_NAME.csv.
"""

import re
import sys
from pathlib import Path

from shrinkflow.core.errors import ShrinkflowError, run_stage
from shrinkflow.core.outputs import commit_outputs, read_json
from shrinkflow.data.prepared import load_prepared
from shrinkflow.measure.evaluate import write_evaluation
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


if __name__ == "__main__":
    run_stage(main)
