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
from shrinkflow.core.metric_keys import model_key
from shrinkflow.core.outputs import commit_outputs, read_json
from shrinkflow.data.prepared import load_prepared
from shrinkflow.measure.evaluate import classification_metrics
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
    logits = model.predict(x, p.batch_size)
    m = classification_metrics(logits, y, data.meta["num_classes"], p.ece_bins)
    classes = data.meta["classes"]
    figures = {"acc": round(m["acc"], 6), "macro_f1": round(m["macro_f1"], 6),
               "loss": round(m["loss"], 6), "ece": round(m["ece"], 6), "params": model.params,
               "macs": model.macs, "file_bytes": model.file_bytes, "test_images": len(y)}
    predicted = logits.argmax(1).tolist()
    pairs = zip(y.tolist(), predicted, strict=True)
    with commit_outputs() as out:
        out.json(METRICS_DIR / f"eval_{name}.json",
                 {model_key(name, field): value for field, value in figures.items()})
        out.csv(METRICS_DIR / f"confusion_{name}.csv", [
            {"actual": classes[a], "predicted": classes[b]} for a, b in pairs
        ])
        out.csv(METRICS_DIR / f"per_class_{name}.csv", [
            {"class": c, "accuracy": round(acc, 6), "support": n}
            for c, acc, n in zip(classes, m["per_class_acc"], m["support"], strict=True)
        ])
    print(f"[evaluate] {name} ({model.runtime} {model.precision}): acc {m['acc']:.2%}  "
          f"macro-F1 {m['macro_f1']:.4f}  loss {m['loss']:.4f}  ECE {m['ece']:.4f}  "
          f"params {model.params}  MACs {model.macs}")


if __name__ == "__main__":
    run_stage(main)
