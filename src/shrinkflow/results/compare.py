"""Cross-experiment comparison from ``dvc exp show --json``: which recipe wins within a budget.

The JSON of DVC 3.x is a list of baseline commits (plus ``"workspace"``); each holds its own
``data`` and ``experiments``, a list of ranges whose ``revs[0]`` is the experiment itself::

    [{"rev": "workspace", "name": null, "data": {...}, "error": null, "experiments": null},
     {"rev": "<sha>", "name": "main", "data": {"params": {"params.yaml": {"data": {...}}},
                                              "metrics": {"metrics/x.json": {"data": {...}}}},
      "error": null,
      "experiments": [{"revs": [{"rev": "<sha>", "name": "exp-1", "data": {...}, ...}],
                       "executor": null, "name": "exp-1"}]}]

Params are flattened to dotted keys (``prune.ratio``); metrics files are flat already and their
keys unique, so they are merged. "Changed params" are those differing from the baseline commit.

What is compared is what ``dvc exp show`` holds: metrics/final.json (select_final), i.e. each
model's test accuracy and the shipped model's accuracy, drop, file size and same-runtime
speed-up, each with its 95 % interval. Differences inside the noise are called ties
(``shrinkflow.measure.noise.tie``, the rule select_final and the report use too). Detection
experiments (``prepare.task: detection``) are compared on their headline score, COCO mAP
(``final_map``, ``teacher_map``: ``core.metric_keys.Score``), which has no interval; one table
holds one task's experiments.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from shrinkflow.core.errors import ShrinkflowError
from shrinkflow.core.metric_keys import (
    ACCURACY,
    MAP,
    TEACHER,
    TEST_IMAGES,
    Score,
    final_key,
    model_key,
)
from shrinkflow.core.outputs import atomic_path
from shrinkflow.measure.noise import Estimate, accuracy_estimate, tie, within_budget
from shrinkflow.results.report import (
    first_number,
    fmt_value,
    markdown_table,
    pareto_front,
    plot_tradeoff,
    save_figure,
    score_header,
)

FINAL = "final"  # compare the model each experiment shipped (metrics/final.json)
BUDGET_KEY = "budget.max_drop_points"  # the one accuracy budget (params.budget)
BUDGET_PNG = "compare_budget.png"


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested params to dotted keys; lists stay values (``batch_sizes: [1, 64]``)."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def _merge_files(files: dict[str, Any] | None) -> dict[str, Any]:
    """Merge ``{file: {"data": {...}}}`` blocks (params or metrics) into one flat dict."""
    merged: dict[str, Any] = {}
    for block in (files or {}).values():
        if isinstance(block, dict) and isinstance(block.get("data"), dict):
            merged.update(flatten(block["data"]))
    return merged


def _short(rev: str) -> str:
    """A commit sha shortened like git does; "workspace" stays as is."""
    return rev[:7] if re.fullmatch(r"[0-9a-f]{40}", rev) else rev


def _state(entry: dict[str, Any], baseline: str, is_baseline: bool) -> dict[str, Any]:
    data = entry.get("data") or {}
    error = entry.get("error")
    return {
        "name": entry.get("name") or _short(str(entry.get("rev", ""))),
        "rev": entry.get("rev"),
        "baseline": baseline,
        "is_baseline": is_baseline,
        "params": _merge_files(data.get("params")),
        "metrics": _merge_files(data.get("metrics")),
        "error": (error or {}).get("msg") if isinstance(error, dict) else error,
    }


def parse_exp_show(payload: list[dict[str, Any]], include_workspace: bool = False) -> list[dict]:
    """One record per baseline commit and experiment: name, rev, params, metrics, error.

    The workspace duplicates whichever experiment was applied last, so it is skipped unless
    asked for (or it is all there is).
    """
    records = []
    for commit in payload:
        is_workspace = commit.get("rev") == "workspace"
        if is_workspace and not include_workspace and len(payload) > 1:
            continue
        base = _state(commit, baseline=commit.get("name") or "workspace", is_baseline=True)
        records.append(base)
        for exp_range in commit.get("experiments") or []:
            revs = exp_range.get("revs") or []
            if revs:
                exp = _state(revs[0], baseline=base["name"], is_baseline=False)
                exp["name"] = exp_range.get("name") or exp["name"]
                exp["changed"] = changed_params(base["params"], exp["params"])
                records.append(exp)
        base["changed"] = {}
    return records


def changed_params(base: dict[str, Any], exp: dict[str, Any]) -> dict[str, Any]:
    """Params whose value differs from the baseline's (new keys included)."""
    return {k: v for k, v in exp.items() if k not in base or base[k] != v}


def records_score(records: list[dict[str, Any]]) -> Score:
    """The headline score the experiments share: mAP when their metrics hold the teacher's mAP
    (detection), else accuracy; experiments of both tasks in one table are one line."""
    tasks = {MAP if model_key(TEACHER, MAP.field) in r["metrics"] else ACCURACY for r in records
             if r["metrics"]}
    if len(tasks) > 1:
        raise ShrinkflowError("the experiments hold both classification (teacher_acc) and "
                              "detection (teacher_map) metrics; compare one task's at a time "
                              "(--rev, or a baseline of one task)")
    return tasks.pop() if tasks else ACCURACY


def experiment_table(records: list[dict[str, Any]], model: str = FINAL) -> pd.DataFrame:
    """One row per experiment: the shipped model's (``model`` "final") or one model's accuracy
    with its 95 % interval, drop vs its own teacher, and, for the shipped model, its file size
    and same-runtime speed-up (with interval). Per-model latencies are not DVC metrics (they
    live in each experiment's metrics/benchmark.csv), so for a named model only accuracy is
    compared."""
    rows = []
    score = records_score(records)
    for r in records:
        m = r["metrics"]
        teacher = first_number(m, model_key(TEACHER, score.field),
                               model_key(TEACHER, f"test_{score.field}"))
        n = first_number(m, TEST_IMAGES)
        if model == FINAL:
            acc = first_number(m, final_key("acc", score))
            low, high = (first_number(m, final_key("acc_low", score)),
                         first_number(m, final_key("acc_high", score)))
            shipped = m.get(final_key("model"))
        else:
            acc = first_number(m, model_key(model, score.field))
            interval = (accuracy_estimate(acc, int(n)) if score.binomial and not (
                math.isnan(acc) or math.isnan(n)) else Estimate(acc, math.nan, math.nan))
            low, high, shipped = interval.low, interval.high, model
        final = {f: first_number(m, final_key(f)) if model == FINAL else math.nan
                 for f in ("file_bytes", "speedup", "speedup_low", "speedup_high")}
        speedup = final["speedup"]
        rows.append({
            "name": r["name"],
            "baseline": r["baseline"],
            "is_baseline": r["is_baseline"],
            "changed": ", ".join(f"{k}={v}" for k, v in sorted(r.get("changed", {}).items())),
            "model": shipped if isinstance(shipped, str) else "-",
            "accuracy": acc,
            "acc_low": low,
            "acc_high": high,
            "test_images": n,
            "drop_points": (teacher - acc) * 100,
            "file_bytes": final["file_bytes"],
            "speedup": speedup,
            "speedup_low": final["speedup_low"],
            "speedup_high": final["speedup_high"],
            # 1 / speed-up: a cost, lower is better, for the Pareto chart
            "relative_latency": 1 / speedup if speedup and not math.isnan(speedup) else math.nan,
            "budget_points": first_number(r["params"], BUDGET_KEY),
            "error": r.get("error") or "",
        })
    df = pd.DataFrame(rows)
    df.attrs["model"], df.attrs["score"] = model, score
    return df


def _estimate(row: pd.Series, col: str, interval: str) -> Estimate:
    """``row[col]`` with its interval from the ``<interval>_low`` / ``_high`` columns."""
    low, high = row.get(f"{interval}_low", math.nan), row.get(f"{interval}_high", math.nan)
    if math.isnan(low) or math.isnan(high):
        return Estimate(row[col], row[col], row[col])
    return Estimate(row[col], low, high)


def _ties(ok: pd.DataFrame, best: pd.Series, col: str, interval: str) -> list[str]:
    """Names of the other rows whose ``col`` is a tie with ``best``'s (``noise.tie``)."""
    mine = _estimate(best, col, interval)
    return [str(r["name"]) for _, r in ok.iterrows()
            if r["name"] != best["name"] and not math.isnan(r[col])
            and tie(mine, _estimate(r, col, interval))]


def answer(df: pd.DataFrame, max_drop: float) -> list[str]:
    """Plain-language answers within ``max_drop`` points: most accurate, smallest file, fastest;
    a winner whose lead is inside the noise is called a tie, naming who it ties with."""
    model = df.attrs.get("model", FINAL)
    score: Score = df.attrs.get("score", ACCURACY)
    what = "the shipped model" if model == FINAL else f"`{model}`"
    ok = df[within_budget(df["drop_points"], max_drop)]
    lines = [f"{len(ok)} of {len(df)} runs (baselines + experiments) keep {what} within "
             f"{max_drop:g} {score.name} points of their teacher."]
    for col, title, best_is, interval, kind in (
            ("accuracy", "most accurate" if score.binomial else f"highest {score.name}", "max",
             "acc", "pct"),
            ("file_bytes", "smallest file", "min", None, "kb"),
            ("speedup", "fastest (same-runtime speed-up vs the teacher)", "max", "speedup", "x")):
        usable = ok[ok[col].notna()]
        if usable.empty:
            if col == "accuracy" or model == FINAL:
                lines.append(f"{_cap(title)}: no experiment qualifies.")
            continue
        best = usable.loc[usable[col].idxmax() if best_is == "max" else usable[col].idxmin()]
        unit = {"kb": " KB", "pct": " %" if score.binomial else " (x 100)", "x": ""}[kind]
        line = (f"{_cap(title)}: `{best['name']}` ({best['changed'] or 'baseline params'}"
                + (f"; ships `{best['model']}`" if model == FINAL else "") + "): "
                f"{fmt_value(best[col], kind)}{unit}, {score.name} "
                f"{fmt_value(best['accuracy'], 'pct')}{' %' if score.binomial else ''}, "
                f"drop {best['drop_points']:.2f} pts.")
        tied = _ties(usable, best, col, interval) if interval else []
        if tied:
            line += f" A tie (inside the noise) with {', '.join(f'`{t}`' for t in tied)}."
        lines.append(line)
    return lines


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def plot_budget_curve(df: pd.DataFrame, path: str | Path) -> Path | None:
    """The shipped model's same-runtime speed-up against the accuracy budget over experiments
    (e.g. a queued sweep over 0.5, 1, 2 points): how much speed each point of accuracy buys.
    None: under 2 budgets, or no speed-ups."""
    data = df[["name", "budget_points", "speedup", "accuracy"]].dropna()
    if data["budget_points"].nunique() < 2:
        return None
    score: Score = df.attrs.get("score", ACCURACY)
    data = data.sort_values("budget_points")
    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    ax.plot(data["budget_points"], data["speedup"], marker="o")
    for _, row in data.iterrows():
        ax.annotate(f"{row['name']} ({row['accuracy'] * 100:.2f}"
                    f"{'%' if score.binomial else ''})",
                    (row["budget_points"], row["speedup"]), textcoords="offset points",
                    xytext=(4, 4), fontsize=8)
    ax.set(xlabel=f"{score.name} budget ({BUDGET_KEY}, points)",
           ylabel="shipped model's speed-up vs the teacher (same runtime)",
           title=f"Speed-up vs {score.name} budget")
    ax.grid(True, alpha=0.3)
    return save_figure(fig, path)


def write_compare(
    df: pd.DataFrame, out_dir: str | Path, max_drop: float
) -> tuple[Path, Path | None]:
    """``compare.md`` (table + answers) and ``compare_pareto.png`` (None: no speed-ups); with
    two or more budgets also ``compare_budget.png`` (linked from the page)."""
    out_dir = Path(out_dir)
    model = df.attrs.get("model", FINAL)
    score: Score = df.attrs.get("score", ACCURACY)
    front = pareto_front(df["relative_latency"].tolist(), df["accuracy"].tolist())
    table = df.assign(pareto=["yes" if f else "" for f in front])
    table["accuracy_ci"] = [_interval_cell(r, "accuracy", "acc", "pct")
                            for _, r in table.iterrows()]
    table["speedup_ci"] = [_interval_cell(r, "speedup", "speedup", "x")
                           for _, r in table.iterrows()]
    headers = {"name": "experiment", "changed": "changed params", "model": "model",
               "accuracy_ci": score_header(score),
               "drop_points": "drop vs teacher (pts)", "file_bytes": "file KB",
               "speedup_ci": "speed-up vs teacher, same runtime", "pareto": "Pareto",
               "budget_points": "budget (pts)", "error": "error"}
    formats = {"drop_points": "pts", "file_bytes": "kb", "budget_points": "str"}
    if not table["error"].astype(bool).any():
        headers.pop("error")
    if model != FINAL:
        for col in ("file_bytes", "speedup_ci", "pareto"):
            headers.pop(col)
    title = "the shipped model" if model == FINAL else f"`{model}`"
    lines = [f"# Experiment comparison ({title})", "",
             *[f"- {line}" for line in answer(df, max_drop)], "",
             markdown_table(table, formats, headers), "",
             ("Intervals are 95 %: accuracy over the test images (Wilson), speed-up over the "
              if score.binomial else
              f"{score.name} is COCO mAP@[.5:.95] x 100, without an interval; speed-ups have "
              "their 95 % interval over the ")
             + "benchmark's rounds. Two figures whose intervals hold each other's value are a "
             "tie.",
             ""]
    chart = None
    if model == FINAL:
        chart = plot_tradeoff(df, "relative_latency",
                              "latency relative to the teacher, same runtime (1 / speed-up)",
                              f"Experiments: shipped model's {score.name} vs latency",
                              out_dir / "compare_pareto.png", label="name", score=score)
    if chart is not None:
        lines += [f"![{score.name} vs latency per experiment]({chart.name})", ""]
    budget_chart = plot_budget_curve(df, out_dir / BUDGET_PNG)
    if budget_chart is not None:
        lines += [f"![speed-up vs {score.name} budget]({budget_chart.name})", ""]
    page = out_dir / "compare.md"
    with atomic_path(page) as tmp:
        tmp.write_text("\n".join(lines))
    return page, chart


def _interval_cell(row: pd.Series, col: str, interval: str, kind: str) -> str:
    value = row[col]
    if value is None or math.isnan(value):
        return "-"
    e = _estimate(row, col, interval)
    text = fmt_value(value, kind)
    return text if e.low == e.high else (f"{text} ({fmt_value(e.low, kind).rstrip('x')}-"
                                         f"{fmt_value(e.high, kind)})")
