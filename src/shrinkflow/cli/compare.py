"""``shrinkflow-compare`` (a command, not a DVC stage): which recipe gives the smallest / fastest
model within
X points of the teacher, across every DVC experiment.

    shrinkflow-compare                        # runs `dvc exp show --json`
    shrinkflow-compare --input exps.json      # a saved `dvc exp show --json` output
    shrinkflow-compare --max-drop 0.5 --model pruned   # one model's accuracy only

(``python -m shrinkflow.cli.compare`` is the same command.) Run it in the project's root.

Writes compare/compare.md and compare/compare_pareto.png and prints the answer; with
experiments over two or more budgets (budget.max_drop_points) also compare/compare_budget.png,
the shipped model's speed-up against the budget. Wins inside the noise are called ties.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from shrinkflow.core.errors import ShrinkflowError, run_stage
from shrinkflow.core.metric_keys import read_model_list
from shrinkflow.params.budget import BudgetParams
from shrinkflow.params.load import load_section
from shrinkflow.results.compare import (
    BUDGET_PNG,
    FINAL,
    answer,
    experiment_table,
    parse_exp_show,
    write_compare,
)

OUT_DIR = "compare"  # not reports/: that folder is the report stage's DVC output
MODEL_LIST = "models.yaml"


def read_exp_show(input_path: str | None) -> list[dict[str, Any]]:
    """The experiments JSON, from a file or from a fresh `dvc exp show --json` run."""
    if input_path:
        path = Path(input_path)
        if not path.is_file():
            raise ShrinkflowError(f"{path}: file not found")
        text = path.read_text()
    else:
        env = {**os.environ, "DVC_NO_ANALYTICS": "1", "DVC_STUDIO_OFFLINE": "true"}
        proc = subprocess.run(["dvc", "exp", "show", "--json"], capture_output=True, text=True,
                              env=env)
        if proc.returncode != 0:
            raise ShrinkflowError(f"`dvc exp show --json` failed:\n{proc.stderr.strip()}")
        text = proc.stdout
    try:
        payload = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ShrinkflowError(f"not the JSON of `dvc exp show --json` ({exc})") from exc
    if not isinstance(payload, list):
        raise ShrinkflowError("expected a JSON list (the output of `dvc exp show --json`)")
    return payload


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", help="saved output of `dvc exp show --json`")
    parser.add_argument("--max-drop", type=float, default=None,
                        help="accuracy budget in points (default: budget.max_drop_points)")
    parser.add_argument("--model", default=FINAL,
                        help="final (default): the model each experiment shipped; or a model "
                        "of models.yaml, whose accuracy alone is compared")
    parser.add_argument("--out-dir", default=OUT_DIR)
    parser.add_argument("--workspace", action="store_true", help="include the workspace row")
    args = parser.parse_args(argv)
    max_drop = args.max_drop
    if max_drop is None:
        max_drop = load_section(BudgetParams).max_drop_points
    models = {m.name: m for m in read_model_list(MODEL_LIST) if m.evaluated}
    if args.model != FINAL and args.model not in models:
        raise ShrinkflowError(f"--model {args.model!r}: not {FINAL!r} nor an evaluated model "
                              f"of {MODEL_LIST} ({', '.join(models)})")
    records = parse_exp_show(read_exp_show(args.input), include_workspace=args.workspace)
    if not records:
        raise ShrinkflowError("no commits or experiments found in `dvc exp show` output")
    df = experiment_table(records, model=args.model)
    page, chart = write_compare(df, args.out_dir, max_drop)
    print(f"[compare] {len(df)} rows ({int((~df['is_baseline']).sum())} experiments), "
          f"model `{args.model}`, budget {max_drop:g} points")
    for line in answer(df, max_drop):
        print(f"[compare] {line}")
    print(f"[compare] wrote {page}" + (f" and {chart}" if chart else " (no latencies: no chart)"))
    if BUDGET_PNG in page.read_text():
        print(f"[compare] latency vs budget: {Path(args.out_dir) / BUDGET_PNG}")


def cli(argv: Sequence[str] | None = None) -> None:
    """Entry point (``shrinkflow-compare``): bad input is one ``error:`` line, exit code 2."""
    run_stage(lambda: main(argv))


if __name__ == "__main__":
    cli(sys.argv[1:])
