"""The human-readable result: one Markdown page and PNG charts built from the metrics files.

DVC's own plots load vega from a CDN and render blank offline, so people get static PNGs
(matplotlib's object API with the Agg canvas: no pyplot global state, no display needed). Every
input but the teacher's accuracy is optional: a missing file or key drops that column or chart
and adds a note to the page instead of failing the whole report.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from shrinkflow.core.errors import ShrinkflowError
from shrinkflow.core.metric_keys import (
    ENSEMBLE_ACC,
    TEACHER,
    ModelEntry,
    bench_batch_sizes,
    bench_key,
    model_key,
    parse_bench_key,
    reference_accuracy_key,
)
from shrinkflow.core.outputs import atomic_path

FINAL_KEY = "final_model"  # metrics/final.json (the select stage): the model that ships
BENCH_CSV = "benchmark.csv"  # one row per model and batch size: runtime, sizes, environment
ENVIRONMENT = ("cpu", "threads", "device", "torch_version", "onnxruntime_version")
HISTORIES = ("teacher", "student_scratch", "distill", "prune")
MARKERS = ("o", "s", "^", "D", "v")
_MEMBER_KEY = re.compile(r"teacher_(\d+)_test_acc")  # extra members' metrics/teacher_SEED.json


# --- reading ----------------------------------------------------------------------------------


def load_metrics(metrics_dir: str | Path) -> dict[str, Any]:
    """All flat ``*.json`` metrics files of a directory merged into one dict (keys are unique)."""
    merged: dict[str, Any] = {}
    for path in sorted(Path(metrics_dir).glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ShrinkflowError(f"{path}: not valid JSON ({exc})") from exc
        if isinstance(data, dict):
            merged.update({k: v for k, v in data.items() if not isinstance(v, (dict, list))})
    return merged


def teacher_accuracy(metrics: dict[str, Any]) -> float:
    """The reference every drop is measured from; the one input the report cannot do without.

    The teacher ensemble's test accuracy when there are extra members (metric_keys), else the
    teacher's."""
    keys = (model_key(TEACHER, "acc"), model_key(TEACHER, "test_acc"))
    value = first_number(metrics, reference_accuracy_key(metrics), *keys)
    if math.isnan(value):
        raise ShrinkflowError(
            f"no teacher accuracy found ({keys[0]} in metrics/eval_{TEACHER}.json or {keys[1]} "
            f"in metrics/{TEACHER}.json): run the pipeline up to evaluate@{TEACHER} first"
        )
    return value


def ensemble_lines(metrics: dict[str, Any]) -> list[str]:
    """The teacher ensemble's section: each member's test accuracy and the ensemble's; no lines
    for a single teacher (no ``teacher_ensemble_test_acc``)."""
    ensemble = first_number(metrics, ENSEMBLE_ACC)
    if math.isnan(ensemble):
        return []
    members = [("teacher (member 0)", first_number(metrics, model_key(TEACHER, "test_acc")))]
    # the current members (a removed member's metrics file stays behind); all found if unknown
    listed = str(metrics.get("teacher_ensemble_seeds", ""))
    seeds = ([int(s) for s in listed.split(",") if s.strip().isdigit()] if listed else
             sorted(int(m[1]) for key in metrics if (m := _MEMBER_KEY.fullmatch(key))))
    members += [(f"teacher_{s} (seed {s})", first_number(metrics, f"teacher_{s}_test_acc"))
                for s in seeds]
    lines = ["## Teacher ensemble", "",
             f"Every accuracy drop above is measured against the ensemble of "
             f"{metrics.get('teacher_ensemble_members', len(members))} teachers (mean of their "
             "probabilities); soft targets for distill and the prune fine-tune are the mean of "
             "the members' softened probabilities. Latency and size columns are member 0's.", "",
             "| model | test accuracy % |", "|---|---|"]
    lines += [f"| {name} | {acc * 100:.2f} |" for name, acc in members]
    lines += [f"| **ensemble** | **{ensemble * 100:.2f}** |", ""]
    return lines


def first_number(metrics: dict[str, Any], *keys: str) -> float:
    """The first numeric value among ``keys``, else NaN (a gap the table shows as "-")."""
    for key in keys:
        value = metrics.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    return math.nan


def bench_facts(bench: pd.DataFrame | None) -> dict[str, dict[str, Any]]:
    """Per model, what the benchmark CSV knows besides latency: runtime, precision, size, counts.

    The report's source for models that are benchmarked but not evaluated, and for the runtime
    each model ran in (decided by ``runtime.open_model`` from the file).
    """
    if bench is None or "model" not in bench.columns:
        return {}
    return {str(r["model"]): r for r in bench.drop_duplicates("model").to_dict("records")}


def model_table(
    metrics: dict[str, Any], models: list[ModelEntry], bench: pd.DataFrame | None = None
) -> pd.DataFrame:
    """One row per model found in the metrics: accuracy, drop, size, cost and speed columns.

    ``models`` (``metric_keys.read_model_list``) gives the rows and their order; ``bench`` is
    metrics/benchmark.csv when present. Accuracy is a fraction; ``drop_points`` = (teacher -
    model) x 100, positive = worse. Models with neither an accuracy nor a latency are left out
    (their stages did not run).
    """
    teacher = teacher_accuracy(metrics)
    facts = bench_facts(bench)
    sizes = bench_batch_sizes(metrics)
    small, large = (sizes[0], sizes[-1]) if sizes else (1, 64)
    rows = []
    for entry in models:
        name, fact = entry.name, facts.get(entry.name, {})
        acc = first_number(metrics, model_key(entry.accuracy_of, "acc"))
        if name == TEACHER and math.isnan(acc):  # no evaluate@teacher: the training stage's
            acc = first_number(metrics, model_key(TEACHER, "test_acc"))

        def known(field: str, name: str = name, fact: dict = fact) -> float:
            value = first_number(metrics, model_key(name, field))
            return first_number(fact, field) if math.isnan(value) else value

        runtime = fact.get("runtime")
        precision = fact.get("precision")
        label = "-" if runtime is None else (
            runtime if str(precision) in str(runtime) else f"{runtime} {precision}")
        row = {
            "model": name,
            "runtime": label,
            "accuracy": acc,
            "drop_points": (teacher - acc) * 100,
            "params": known("params"),
            "macs": known("macs"),
            "file_bytes": known("file_bytes"),
            f"b{small}_ms": first_number(metrics, bench_key(name, small, "p50_ms")),
            f"b{large}_ms": first_number(metrics, bench_key(name, large, "p50_ms")),
            # compression's gain alone: against the teacher's form in the same runtime
            f"speedup_b{large}": first_number(
                metrics, bench_key(name, large, "speedup_vs_teacher_same_runtime")),
        }
        if entry.accuracy_of == TEACHER and not math.isnan(row[f"b{large}_ms"]):
            row[f"speedup_b{large}"] = 1.0  # a teacher form is its runtime's reference
        if math.isnan(row["accuracy"]) and math.isnan(row[f"b{large}_ms"]):
            continue
        rows.append(row)
    return pd.DataFrame(rows)


# --- analysis ---------------------------------------------------------------------------------


def pareto_front(cost: Sequence[float], value: Sequence[float]) -> list[bool]:
    """True for points no other point beats: lower-or-equal cost AND higher-or-equal value,
    strictly better in one. NaN points are never on the front (and never dominate)."""
    c, v = np.asarray(cost, dtype=float), np.asarray(value, dtype=float)
    ok = ~(np.isnan(c) | np.isnan(v))
    front = []
    for i in range(len(c)):
        if not ok[i]:
            front.append(False)
            continue
        no_worse = ok & (c <= c[i]) & (v >= v[i])
        better = (c < c[i]) | (v > v[i])
        front.append(not bool(np.any(no_worse & better)))
    return front


def best_within(df: pd.DataFrame, max_drop: float, cost: str) -> pd.Series | None:
    """The row with the lowest ``cost`` among those within ``max_drop`` points of the teacher."""
    ok = df[(df["drop_points"] <= max_drop + 1e-9) & df[cost].notna()]
    return None if ok.empty else ok.loc[ok[cost].idxmin()]


# --- Markdown ---------------------------------------------------------------------------------


def fmt_value(value: Any, kind: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if kind == "pct":
        return f"{value * 100:.2f}"
    if kind == "pts":
        return f"{value:+.2f}"
    if kind == "int":
        return f"{int(value):,}"
    if kind == "mega":  # MACs / params: millions when large, exact when small
        return f"{value / 1e6:.2f} M" if abs(value) >= 1e5 else f"{int(value):,}"
    if kind == "kb":
        return f"{value / 1024:.1f}"
    if kind == "ms":
        return f"{value:.3f}"
    if kind == "x":
        return f"{value:.2f}x"
    return str(value)


def markdown_table(df: pd.DataFrame, formats: dict[str, str], headers: dict[str, str]) -> str:
    """A GitHub Markdown table of ``df``'s columns named in ``headers`` (no tabulate needed)."""
    cols = [c for c in headers if c in df.columns]
    lines = [
        "| " + " | ".join(headers[c] for c in cols) + " |",
        "|" + "|".join("---" if formats.get(c, "str") == "str" else "---:" for c in cols) + "|",
    ]
    for _, row in df.iterrows():
        cells = (fmt_value(row[c], formats.get(c, "str")) for c in cols)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def models_markdown(df: pd.DataFrame) -> str:
    """The models table with readable headers and units."""
    formats = {"accuracy": "pct", "drop_points": "pts", "params": "int", "macs": "mega",
               "file_bytes": "kb"}
    headers = {"model": "model", "runtime": "runtime", "accuracy": "accuracy %",
               "drop_points": "drop vs teacher (pts)", "params": "params", "macs": "MACs",
               "file_bytes": "file KB"}
    for col in df.columns:
        if col.endswith("_ms"):
            formats[col], headers[col] = "ms", f"{col[:-3]} p50 ms"
        elif col.startswith("speedup_"):
            formats[col], headers[col] = "x", (f"speed-up vs teacher, same runtime "
                                               f"({col.split('_')[1]})")
    return markdown_table(df, formats, headers)


# --- charts -----------------------------------------------------------------------------------


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Write a figure as PNG atomically (reports/ is a DVC output: never leave half a file)."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    return Path(path)


def plot_tradeoff(
    df: pd.DataFrame,
    x: str,
    x_label: str,
    title: str,
    path: str | Path,
    label: str = "model",
    reference: float | None = None,
    max_drop: float | None = None,
) -> Path | None:
    """Accuracy (y) against a cost (x, log scale) with the Pareto front drawn and marked.

    ``reference`` (the teacher's accuracy %) and ``max_drop`` draw the accuracy budget line.
    Returns None when fewer than one point has both coordinates.
    """
    data = df[[label, x, "accuracy"]].dropna()
    if data.empty:
        return None
    acc = data["accuracy"] * 100
    front = np.array(pareto_front(data[x].tolist(), acc.tolist()))
    fig = Figure(figsize=(8.5, 4.5))
    ax = fig.subplots()
    order = np.argsort(data[x][front].to_numpy())
    ax.step(data[x][front].to_numpy()[order], acc[front].to_numpy()[order], where="post",
            color="black", alpha=0.35, label="Pareto front")
    # One colour/marker per point, named in the legend: close points (pruned and pruned_onnx)
    # would make text labels collide. Front points get a black ring.
    for i, (name, xv, yv, on_front) in enumerate(
        zip(data[label], data[x], acc, front, strict=True)
    ):
        ax.scatter([xv], [yv], s=70, color=f"C{i % 10}", marker=MARKERS[(i // 10) % len(MARKERS)],
                   edgecolors="black" if on_front else "none", linewidths=2, zorder=3,
                   label=f"{name}{' (front)' if on_front else ''}")
    if reference is not None and max_drop is not None:
        ax.axhline(reference - max_drop, color="tab:blue", linestyle="--", linewidth=1,
                   label=f"teacher - {max_drop:g} points")
    if (data[x] > 0).all() and data[x].max() / max(data[x].min(), 1e-12) > 20:
        ax.set_xscale("log")
    ax.margins(x=0.08, y=0.08)
    ax.set_xlabel(x_label)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return save_figure(fig, path)


def plot_histories(histories: dict[str, pd.DataFrame], path: str | Path) -> Path | None:
    """Validation accuracy and training loss per epoch, one line per training run."""
    usable = {k: h for k, h in histories.items() if {"epoch", "val_acc"} <= set(h.columns)}
    if not usable:
        return None
    fig = Figure(figsize=(10, 4))
    ax_acc, ax_loss = fig.subplots(1, 2)
    for name, h in usable.items():
        ax_acc.plot(h["epoch"], h["val_acc"] * 100, marker=".", label=name)
        if "train_loss" in h.columns:
            ax_loss.plot(h["epoch"], h["train_loss"], marker=".", label=name)
    ax_acc.set(xlabel="epoch", ylabel="val accuracy (%)", title="Validation accuracy")
    ax_loss.set(xlabel="epoch", ylabel="train loss", title="Training loss")
    for ax in (ax_acc, ax_loss):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    return save_figure(fig, path)


def plot_confusion(pairs: pd.DataFrame, title: str, path: str | Path) -> Path | None:
    """Heatmap of counts (actual rows x predicted columns) from one row per test sample."""
    if not {"actual", "predicted"} <= set(pairs.columns) or pairs.empty:
        return None
    labels = sorted(set(pairs["actual"]) | set(pairs["predicted"]), key=str)
    table = pd.crosstab(pairs["actual"], pairs["predicted"]).reindex(
        index=labels, columns=labels, fill_value=0
    )
    n = len(labels)
    side = min(max(4.0, 0.45 * n + 2), 12.0)  # 100 classes must not make a 45-inch figure
    fig = Figure(figsize=(side, side - 0.5))
    ax = fig.subplots()
    image = ax.imshow(table.to_numpy(), cmap="Blues")
    fig.colorbar(image, ax=ax, shrink=0.8)
    if n <= 40:
        ax.set_xticks(range(n), [str(v) for v in labels], rotation=90 if n > 12 else 0)
        ax.set_yticks(range(n), [str(v) for v in labels])
    if n <= 20:
        top = table.to_numpy().max()
        for (i, j), count in np.ndenumerate(table.to_numpy()):
            if count:
                ax.text(j, i, str(count), ha="center", va="center", fontsize=7,
                        color="white" if count > top / 2 else "black")
    ax.set(xlabel="predicted", ylabel="actual", title=title)
    return save_figure(fig, path)


def plot_sensitivity(df: pd.DataFrame, path: str | Path) -> Path | None:
    """Accuracy after pruning each layer alone at each ratio: flat lines are safe to prune."""
    if not {"layer", "ratio", "accuracy"} <= set(df.columns) or df.empty:
        return None
    fig = Figure(figsize=(8, 4.5))
    ax = fig.subplots()
    for layer, group in df.groupby("layer", sort=False):
        group = group.sort_values("ratio")
        ax.plot(group["ratio"], group["accuracy"] * 100, marker="o", label=str(layer))
    ax.set(xlabel="pruning ratio (fraction of channels removed)", ylabel="accuracy (%)",
           title="Per-layer pruning sensitivity")
    ax.grid(True, alpha=0.3)
    n_layers = df["layer"].nunique()
    ax.legend(fontsize=7, ncol=1 + n_layers // 12, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return save_figure(fig, path)


def plot_prune_steps(steps: pd.DataFrame, budget: float, path: str | Path) -> Path | None:
    """Budget-mode pruning: validation accuracy against MACs per step, with the budget line."""
    if not {"step", "macs", "val_acc"} <= set(steps.columns) or len(steps) < 2:
        return None
    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    ax.plot(steps["macs"], steps["val_acc"] * 100, marker="o", color="tab:blue")
    for _, row in steps.iterrows():
        ax.annotate(f"step {int(row['step'])}", (row["macs"], row["val_acc"] * 100),
                    textcoords="offset points", xytext=(4, 4), fontsize=8)
    base = float(steps["val_acc"].iloc[0]) * 100
    ax.axhline(base - budget, color="tab:red", linestyle="--", linewidth=1,
               label=f"student - {budget:g} points")
    ax.set(xlabel="MACs per image", ylabel="validation accuracy (%)",
           title="Budget-mode pruning: one point per step")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def budget_lines(metrics: dict[str, Any], steps: pd.DataFrame | None) -> list[str]:
    """The budget-mode section: why pruning stopped, the widths kept, val and test drops, and
    the per-step curve as a table. Empty for a fixed ratio (no ``prune_budget_points``)."""
    budget = metrics.get("prune_budget_points")
    if not isinstance(budget, (int, float)) or isinstance(budget, bool):
        return []
    test_ok = metrics.get("prune_within_budget_on_test")
    lines = ["## Budget-mode pruning", "",
             f"- Budget: {budget:g} points below the unpruned student on validation. Kept step "
             f"{metrics.get('prune_step_chosen', '?')} (step 0 = the student); stop: "
             f"{metrics.get('prune_stop_reason', '?')}.",
             f"- Channels kept: `{metrics.get('prune_channels', '?')}`.",
             f"- Drop: {first_number(metrics, 'prune_val_drop_points'):.2f} points on "
             f"validation, {first_number(metrics, 'prune_acc_drop_points'):.2f} on test ("
             + ("within" if test_ok else "OVER") + " the budget on test).", ""]
    if steps is not None and len(steps):
        formats = {"val_acc": "pct", "macs": "mega", "val_drop_points": "pts",
                   "predicted_drop_points": "pts"}
        headers = {"step": "step", "channels": "channels", "macs": "MACs",
                   "predicted_drop_points": "predicted drop (pts)", "val_acc": "val acc %",
                   "val_drop_points": "val drop (pts)", "within_budget": "within budget"}
        lines += [markdown_table(steps, formats, headers), ""]
    return lines


# --- the whole report -------------------------------------------------------------------------


def _read_csv(path: Path, notes: list[str]) -> pd.DataFrame | None:
    if not path.is_file():
        notes.append(f"`{path.name}` not found: its chart is skipped.")
        return None
    try:
        return pd.read_csv(path)
    except (pd.errors.EmptyDataError, pd.errors.ParserError) as exc:
        notes.append(f"`{path.name}` could not be read ({exc}): its chart is skipped.")
        return None


def _final_lines(metrics: dict[str, Any], large: str) -> list[str]:
    """The report's lead: the model the select stage chose (metrics/final.json), and the
    teacher's runtime gain that the same-runtime speed-up leaves out."""
    name = metrics.get(FINAL_KEY)
    if not isinstance(name, str):
        return ["- No final model selected (metrics/final.json not found: run the select "
                "stage)."]
    parts = [f"**Final model: `{name}`** ({metrics.get('final_runtime', '?')}, "
             f"`{metrics.get('final_file', '?')}`): accuracy "
             f"{first_number(metrics, 'final_acc') * 100:.2f}%, drop "
             f"{first_number(metrics, 'final_drop_points'):.2f} pts (budget "
             f"{first_number(metrics, 'final_max_drop_points'):g})"]
    smaller = first_number(metrics, "final_smaller_than_teacher")
    if not math.isnan(smaller):
        parts.append(f"{smaller:.1f}x smaller file than the teacher's")
    batch = metrics.get("final_batch_size", "?")
    same = first_number(metrics, "final_speedup_vs_teacher_same_runtime")
    if not math.isnan(same):
        parts.append(f"{same:.2f}x faster than the teacher in the same runtime at batch {batch}")
    total = first_number(metrics, "final_speedup_vs_teacher")
    if not math.isnan(total):
        parts.append(f"{total:.2f}x vs the PyTorch teacher")
    lines = ["- " + ", ".join(parts) + "."]
    if isinstance(metrics.get("final_reason"), str):
        lines.append(f"- Why: {metrics['final_reason']}.")
    for key, value in metrics.items():  # the runtime's gain: teacher torch -> teacher export
        parsed = parse_bench_key(key)
        if parsed and parsed[2] == "speedup_vs_teacher" and f"b{parsed[1]}" == large:
            lines.append(f"- Runtime's gain alone: `{parsed[0]}` runs {value:.2f}x faster than "
                         f"the PyTorch `{TEACHER}` at {large.replace('b', 'batch ')} (same "
                         "weights); speed-ups below are within one runtime.")
    return lines


def _headline(df: pd.DataFrame, metrics: dict[str, Any], max_drop: float, large: str) -> list[str]:
    lines = _final_lines(metrics, large)
    if isinstance(metrics.get("distill_input_size"), str):
        lines.append(f"- Student input size: {metrics['distill_input_size']} (what its network "
                     "sees: `distill.input_size` downsamples inside the model, whose files still "
                     "take full-size images; MACs at this size).")
    if isinstance(metrics.get("kd_gain_points"), (int, float)):
        lines.append(f"- Distillation vs the same student trained from scratch: "
                     f"{metrics['kd_gain_points']:+.2f} pts.")
    for cost, what in (("file_bytes", "smallest file"), (f"{large}_ms", f"fastest at {large}")):
        if cost in df.columns:
            best = best_within(df, max_drop, cost)
            lines.append(f"- {what[:1].upper() + what[1:]} within {max_drop:g} points of the "
                         "teacher: "
                         + (f"`{best['model']}` ({best['runtime']})." if best is not None
                            else "none."))
    return lines


def build_report(
    metrics_dir: str | Path, out_dir: str | Path, max_drop: float, models: list[ModelEntry]
) -> tuple[Path, list[Path], list[str]]:
    """Write ``summary.md`` and the PNG charts into ``out_dir``; returns (page, charts, notes).

    ``models`` is the pipeline's model list (``metric_keys.read_model_list``): the table's rows.
    """
    metrics_dir, out_dir = Path(metrics_dir), Path(out_dir)
    metrics = load_metrics(metrics_dir)
    notes: list[str] = []
    bench = _read_csv(metrics_dir / BENCH_CSV, notes) if (metrics_dir / BENCH_CSV).is_file() \
        else None
    df = model_table(metrics, models, bench)
    teacher_pct = teacher_accuracy(metrics) * 100
    sizes = bench_batch_sizes(metrics)
    large = f"b{sizes[-1]}" if sizes else "b64"
    if not sizes:
        notes.append("`benchmark.json` has no latencies: speed columns and chart are empty.")
    charts: list[tuple[str, Path | None]] = [
        ("Accuracy vs latency", plot_tradeoff(
            df, f"{large}_ms", f"median latency at batch {large[1:]} (ms)",
            f"Accuracy vs latency ({large})", out_dir / "accuracy_vs_latency.png",
            reference=teacher_pct, max_drop=max_drop)),
        ("Accuracy vs size", plot_tradeoff(
            df.assign(file_kb=df["file_bytes"] / 1024), "file_kb", "file size (KB)",
            "Accuracy vs model file size", out_dir / "accuracy_vs_size.png",
            reference=teacher_pct, max_drop=max_drop)),
    ]
    histories = {}
    for name in HISTORIES:
        h = _read_csv(metrics_dir / f"history_{name}.csv", notes)
        if h is not None:
            histories[name] = h
    charts.append(("Training curves", plot_histories(histories, out_dir / "training_curves.png")))
    final = metrics.get(FINAL_KEY)
    evaluated_as = {e.name: e.accuracy_of for e in models}.get(final) if final else None
    if evaluated_as:  # a benchmark-only final model shares its weights' predictions
        pairs = _read_csv(metrics_dir / f"confusion_{evaluated_as}.csv", notes)
        if pairs is not None:
            charts.append((f"Confusion matrix ({final})", plot_confusion(
                pairs, f"Confusion matrix: {final} (test set)",
                out_dir / f"confusion_{evaluated_as}.png")))
    sens = _read_csv(metrics_dir / "prune_sensitivity.csv", notes)
    if sens is not None:
        sens_png = plot_sensitivity(sens, out_dir / "prune_sensitivity.png")
        charts.append(("Prune sensitivity", sens_png))
    steps_csv = metrics_dir / "prune_steps.csv"  # budget mode only: no note when absent
    steps = _read_csv(steps_csv, notes) if steps_csv.is_file() else None
    budget = budget_lines(metrics, steps)
    if budget and steps is not None and len(steps) > 1:
        charts.append(("Budget-mode pruning steps", plot_prune_steps(
            steps, float(metrics["prune_budget_points"]), out_dir / "prune_steps.png")))
    for title, written in charts:
        if written is None:
            notes.append(f"{title}: no usable data, chart skipped.")

    shared = "; ".join(f"`{e.name}` shares the {e.accuracy_of} model's weights and accuracy "
                       "(not evaluated separately)" for e in models if not e.evaluated)
    lines = ["# shrinkflow report", "", *_headline(df, metrics, max_drop, large), "",
             "## Models", "", models_markdown(df), "",
             "Accuracy is on the test split; drop = teacher minus model, in percentage points"
             + (" (the teacher ensemble's accuracy minus the model's)"
                if reference_accuracy_key(metrics) == ENSEMBLE_ACC else "") + ". "
             "Latency is the median of the benchmark's timed runs; speed-up = the median of the "
             "teacher's form in the same runtime (PyTorch or ONNX Runtime) / the model's, both "
             "measured in the same benchmark run"
             + (f"; {shared}" if shared else "") + ".", ""]
    lines += ensemble_lines(metrics)
    lines += budget
    for title, written in charts:
        if written is not None:
            lines += [f"## {title}", "", f"![{title}]({written.name})", ""]
    env = bench.iloc[0].to_dict() if bench is not None and len(bench) else {}
    env_lines = [f"- {k}: {env[k]}" for k in ENVIRONMENT if k in env]
    if env_lines:
        lines += ["## Benchmark environment", "", *env_lines, ""]
    if notes:
        lines += ["## Notes", "", *[f"- {n}" for n in notes], ""]
    page = out_dir / "summary.md"
    with atomic_path(page) as tmp:
        tmp.write_text("\n".join(lines))
    return page, [p for _, p in charts if p is not None], notes
