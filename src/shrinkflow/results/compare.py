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
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from shrinkflow.core.metric_keys import TEACHER, bench_batch_sizes, bench_key, model_key
from shrinkflow.core.outputs import atomic_path
from shrinkflow.results.report import (
    first_number,
    fmt_value,
    markdown_table,
    pareto_front,
    plot_tradeoff,
    save_figure,
)

BUDGET_KEY = "prune.max_drop_points"  # the budget of budget-mode pruning (prune.ratio: auto)
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


def experiment_table(
    records: list[dict[str, Any]], model: str = "quantized", accuracy_of: str | None = None
) -> pd.DataFrame:
    """One row per experiment: its ``model``'s accuracy, drop vs its own teacher, size, speed.

    A benchmark-only model (``pruned_onnx``: the pruned weights in ONNX Runtime) has no evaluate
    metrics of its own: ``accuracy_of`` (models.yaml) names the model whose accuracy and MACs it
    shares; its file size is then unknown here (metrics/benchmark.csv has it).
    """
    weights = accuracy_of or model
    sizes = bench_batch_sizes({k for r in records for k in r["metrics"]}, model)
    batch = sizes[-1] if sizes else 64
    rows = []
    for r in records:
        m = r["metrics"]
        teacher = first_number(m, model_key(TEACHER, "acc"), model_key(TEACHER, "test_acc"))
        acc = first_number(m, model_key(weights, "acc"), model_key(weights, "test_acc"))
        rows.append({
            "name": r["name"],
            "baseline": r["baseline"],
            "is_baseline": r["is_baseline"],
            "changed": ", ".join(f"{k}={v}" for k, v in sorted(r.get("changed", {}).items())),
            "accuracy": acc,
            "drop_points": (teacher - acc) * 100,
            "macs": first_number(m, model_key(weights, "macs")),
            "file_bytes": first_number(m, model_key(model, "file_bytes")),
            "latency_ms": first_number(m, bench_key(model, batch, "p50_ms")),
            # budget-mode pruning's budget; NaN where the ratio is fixed (the key then does nothing)
            "budget_points": first_number(r["params"], BUDGET_KEY)
            if r["params"].get("prune.ratio") == "auto" else float("nan"),
            "error": r.get("error") or "",
        })
    df = pd.DataFrame(rows)
    df.attrs["batch"] = batch
    df.attrs["model"] = model
    return df


def answer(df: pd.DataFrame, max_drop: float) -> list[str]:
    """Plain-language answers: smallest and fastest recipe within ``max_drop`` points."""
    model, batch = df.attrs.get("model", "model"), df.attrs.get("batch", 64)
    ok = df[df["drop_points"] <= max_drop + 1e-9]
    lines = [f"{len(ok)} of {len(df)} runs (baselines + experiments) keep `{model}` within "
             f"{max_drop:g} points of their teacher."]
    for col, what, kind in (("file_bytes", "smallest file", "kb"),
                            ("macs", "fewest MACs", "mega"),
                            ("latency_ms", f"fastest at batch {batch}", "ms")):
        usable = ok[ok[col].notna()]
        if usable.empty:
            lines.append(f"{_cap(what)}: no experiment qualifies.")
            continue
        best = usable.loc[usable[col].idxmin()]
        unit = {"kb": " KB", "mega": " MACs", "ms": " ms"}[kind]
        lines.append(
            f"{_cap(what)}: `{best['name']}` ({best['changed'] or 'baseline params'}): "
            f"{fmt_value(best[col], kind)}{unit}, accuracy {best['accuracy'] * 100:.2f}%, "
            f"drop {best['drop_points']:.2f} pts."
        )
    return lines


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def plot_budget_curve(df: pd.DataFrame, path: str | Path) -> Path | None:
    """Latency against the pruning budget over budget-mode experiments (e.g. a queued sweep over
    0.5, 1, 2 points): how much speed each point of accuracy buys. None: under 2 budgets."""
    data = df[["name", "budget_points", "latency_ms", "accuracy"]].dropna()
    if data["budget_points"].nunique() < 2:
        return None
    data = data.sort_values("budget_points")
    model, batch = df.attrs.get("model", "model"), df.attrs.get("batch", 64)
    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    ax.plot(data["budget_points"], data["latency_ms"], marker="o")
    for _, row in data.iterrows():
        ax.annotate(f"{row['name']} ({row['accuracy'] * 100:.2f}%)",
                    (row["budget_points"], row["latency_ms"]), textcoords="offset points",
                    xytext=(4, 4), fontsize=8)
    ax.set(xlabel=f"accuracy budget ({BUDGET_KEY}, points)",
           ylabel=f"{model} median latency at batch {batch} (ms)",
           title="Latency vs accuracy budget (budget-mode pruning)")
    ax.grid(True, alpha=0.3)
    return save_figure(fig, path)


def write_compare(
    df: pd.DataFrame, out_dir: str | Path, max_drop: float
) -> tuple[Path, Path | None]:
    """``compare.md`` (table + answers) and ``compare_pareto.png`` (None: no latencies); with
    two or more budget-mode budgets also ``compare_budget.png`` (linked from the page)."""
    out_dir = Path(out_dir)
    model, batch = df.attrs.get("model", "model"), df.attrs.get("batch", 64)
    front = pareto_front(df["latency_ms"].tolist(), df["accuracy"].tolist())
    table = df.assign(pareto=["yes" if f else "" for f in front])
    headers = {"name": "experiment", "changed": "changed params", "accuracy": "accuracy %",
               "drop_points": "drop vs teacher (pts)", "macs": "MACs", "file_bytes": "file KB",
               "latency_ms": f"b{batch} p50 ms", "pareto": "Pareto",
               "budget_points": "prune budget (pts)", "error": "error"}
    formats = {"accuracy": "pct", "drop_points": "pts", "macs": "mega", "file_bytes": "kb",
               "latency_ms": "ms", "budget_points": "str"}
    if not table["error"].astype(bool).any():
        headers.pop("error")
    if table["budget_points"].isna().all():
        headers.pop("budget_points")
    lines = [f"# Experiment comparison (`{model}` model)", "",
             *[f"- {line}" for line in answer(df, max_drop)], "",
             markdown_table(table, formats, headers), ""]
    chart = plot_tradeoff(df, "latency_ms", f"{model} median latency at batch {batch} (ms)",
                          f"Experiments: {model} accuracy vs latency",
                          out_dir / "compare_pareto.png", label="name")
    if chart is not None:
        lines += [f"![accuracy vs latency per experiment]({chart.name})", ""]
    budget_chart = plot_budget_curve(df, out_dir / BUDGET_PNG)
    if budget_chart is not None:
        lines += [f"![latency vs accuracy budget]({budget_chart.name})", ""]
    page = out_dir / "compare.md"
    with atomic_path(page) as tmp:
        tmp.write_text("\n".join(lines))
    return page, chart
