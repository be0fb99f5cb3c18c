"""evaluate: test-set metrics for one model (one DVC foreach item per model).

Usage: python stages/evaluate.py NAME MODEL_FILE
Writes metrics/eval_NAME.json (keys NAME_*), metrics/confusion_NAME.csv (one row per test
image, for DVC's confusion template) and metrics/per_class_NAME.csv.
"""

import re
import sys
from pathlib import Path

from shrinkflow.artifacts import commit_outputs
from shrinkflow.data import load_prepared
from shrinkflow.errors import ShrinkflowError, run_stage
from shrinkflow.evaluate import classification_metrics, load_predictor
from shrinkflow.params import load_section

DATA_DIR = "data/prepared"
METRICS_DIR = Path("metrics")


def main() -> None:
    if len(sys.argv) != 3 or not re.fullmatch(r"[A-Za-z0-9_]+", sys.argv[1]):
        raise ShrinkflowError(
            "usage: python stages/evaluate.py NAME MODEL_FILE (NAME: [A-Za-z0-9_])"
        )
    name, model_path = sys.argv[1], Path(sys.argv[2])
    p = load_section("evaluate")
    data = load_prepared(DATA_DIR)
    predictor = load_predictor(model_path, tuple(data.meta["shape"]), p.batch_size)
    x, y = data.test
    logits = predictor.predict(x)
    m = classification_metrics(logits, y, data.meta["num_classes"], p.ece_bins)
    classes = data.meta["classes"]
    predicted = logits.argmax(1).tolist()
    pairs = zip(y.tolist(), predicted, strict=True)
    with commit_outputs() as out:
        out.json(METRICS_DIR / f"eval_{name}.json", {
            f"{name}_acc": round(m["acc"], 6),
            f"{name}_macro_f1": round(m["macro_f1"], 6),
            f"{name}_loss": round(m["loss"], 6),
            f"{name}_ece": round(m["ece"], 6),
            f"{name}_params": predictor.params,
            f"{name}_macs": predictor.macs,
            f"{name}_file_bytes": model_path.stat().st_size,
            f"{name}_test_images": len(y),
        })
        out.csv(METRICS_DIR / f"confusion_{name}.csv", [
            {"actual": classes[a], "predicted": classes[b]} for a, b in pairs
        ])
        out.csv(METRICS_DIR / f"per_class_{name}.csv", [
            {"class": c, "accuracy": round(acc, 6), "support": n}
            for c, acc, n in zip(classes, m["per_class_acc"], m["support"], strict=True)
        ])
    print(f"[evaluate] {name} ({predictor.runtime}): acc {m['acc']:.2%}  macro-F1 "
          f"{m['macro_f1']:.4f}  loss {m['loss']:.4f}  ECE {m['ece']:.4f}  "
          f"params {predictor.params}  MACs {predictor.macs}")


if __name__ == "__main__":
    run_stage(main)
