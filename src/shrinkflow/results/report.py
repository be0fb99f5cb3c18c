"""The human-readable result: one Markdown page and PNG charts built from the metrics files.

DVC's own plots load vega from a CDN and render blank offline, so people get static PNGs
(matplotlib's object API with the Agg canvas: no pyplot global state, no display needed). Every
input but the teacher's accuracy is optional: a missing file or key drops that column or chart
and adds a note to the page instead of failing the whole report.

On detection data (``build_report``'s ``score``: ``metric_keys.task_score`` of the prepared data)
the same page and charts measure the test mAP: the table, the budget line and the charts' axes
say mAP (x 100, i.e. mAP points), drops are in mAP points, and no accuracy interval is drawn
(mAP is not a binomial proportion; select_final records none either).
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
    ACCURACY,
    ENSEMBLE_ACC,
    KD_GAIN,
    STUDENT,
    TEACHER,
    ModelEntry,
    Score,
    model_key,
    reference_accuracy_key,
    score_field,
)
from shrinkflow.core.outputs import atomic_path
from shrinkflow.measure.noise import Estimate, accuracy_estimate, tie, within_budget

SELECTION_JSON = "selection.json"  # select_final's whole decision (not a flat metrics file)
BENCH_CSV = "benchmark.csv"  # one row per model and batch size: latencies, runtime, environment
ENVIRONMENT = ("cpu", "threads", "device", "torch_version", "onnxruntime_version")
HISTORIES = ("teacher", "student_scratch", "distill", "prune")
# one marker per model as well as one colour: nine models must be told apart in grey print and
# by colour-blind readers
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "h", "p", "*")
_MEMBER_KEY = re.compile(r"teacher_(\d+)_test_acc")  # extra members' metrics/teacher_SEED.json


# --- reading ----------------------------------------------------------------------------------


def load_metrics(metrics_dir: str | Path) -> dict[str, Any]:
    """All flat ``*.json`` metrics files of a directory merged into one dict (keys are unique)."""
    merged: dict[str, Any] = {}
    for path in sorted(Path(metrics_dir).glob("*.json")):
        if path.name == SELECTION_JSON:
            continue
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ShrinkflowError(f"{path}: not valid JSON ({exc})") from exc
        if isinstance(data, dict):
            merged.update({k: v for k, v in data.items() if not isinstance(v, (dict, list))})
    return merged


def teacher_accuracy(metrics: dict[str, Any], score: Score = ACCURACY) -> float:
    """The reference every drop is measured from; the one input the report cannot do without.

    The teacher ensemble's test accuracy when there are extra members (metric_keys), else the
    teacher's score (its mAP on detection data)."""
    keys = (model_key(TEACHER, score.field), model_key(TEACHER, f"test_{score.field}"))
    value = first_number(metrics, reference_accuracy_key(metrics, score), *keys)
    if math.isnan(value):
        raise ShrinkflowError(
            f"no teacher {score.name} found ({keys[0]} in metrics/eval_{TEACHER}.json or {keys[1]} "
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
    each model ran in (decided by ``model_files.open.open_model`` from the file).
    """
    if bench is None or "model" not in bench.columns:
        return {}
    return {str(r["model"]): r for r in bench.drop_duplicates("model").to_dict("records")}


def bench_batch_sizes(bench: pd.DataFrame | None) -> list[int]:
    """The benchmarked batch sizes (none without a benchmark CSV)."""
    if bench is None or "batch_size" not in bench.columns:
        return []
    return sorted({int(b) for b in bench["batch_size"].dropna()})


def _bench_row(bench: pd.DataFrame | None, model: str, batch: int) -> dict[str, Any]:
    if bench is None or "model" not in bench.columns:
        return {}
    rows = bench[(bench["model"] == model) & (bench["batch_size"] == batch)]
    return rows.iloc[0].to_dict() if len(rows) else {}


def model_table(
    metrics: dict[str, Any], models: list[ModelEntry], bench: pd.DataFrame | None = None,
    score: Score = ACCURACY,
) -> pd.DataFrame:
    """One row per model found in the metrics: accuracy (with its test-set size and 95 %
    interval), drop, size, cost, latency (median and its interval over the rounds) and
    same-runtime speed-up (with its interval) columns.

    ``models`` (``metric_keys.read_model_list``) gives the rows and their order; ``bench`` is
    metrics/benchmark.csv when present. Accuracy is a fraction; ``drop_points`` = (teacher -
    model) x 100, positive = worse. Models with neither an accuracy nor a latency are left out
    (their stages did not run). ``score`` is the task's: on detection data the ``accuracy``
    column holds the test mAP and the interval columns are NaN (no binomial interval).
    """
    teacher = teacher_accuracy(metrics, score)
    facts = bench_facts(bench)
    sizes = bench_batch_sizes(bench)
    small, large = (sizes[0], sizes[-1]) if sizes else (1, 64)
    rows = []
    for entry in models:
        name, fact = entry.name, facts.get(entry.name, {})
        acc = first_number(metrics, model_key(entry.accuracy_of, score.field))
        if name == TEACHER and math.isnan(acc):  # no evaluate@teacher: the training stage's
            acc = first_number(metrics, model_key(TEACHER, f"test_{score.field}"))
        n = first_number(metrics, model_key(entry.accuracy_of, "test_images"))
        interval = (accuracy_estimate(acc, int(n))
                    if score.binomial and not (math.isnan(acc) or math.isnan(n))
                    else Estimate(acc, math.nan, math.nan))

        def known(field: str, name: str = name, fact: dict = fact) -> float:
            value = first_number(metrics, model_key(name, field))
            return first_number(fact, field) if math.isnan(value) else value

        runtime = fact.get("runtime")
        precision = fact.get("precision")
        label = "-" if runtime is None else (
            runtime if str(precision) in str(runtime) else f"{runtime} {precision}")
        at_small, at_large = _bench_row(bench, name, small), _bench_row(bench, name, large)
        row = {
            "model": name,
            "runtime": label,
            "accuracy": acc,
            "acc_low": interval.low,
            "acc_high": interval.high,
            "test_images": n,
            "drop_points": (teacher - acc) * 100,
            "params": known("params"),
            "macs": known("macs"),
            "file_bytes": known("file_bytes"),
            f"b{small}_ms": first_number(at_small, "p50_ms"),
            f"b{large}_ms": first_number(at_large, "p50_ms"),
            f"b{large}_low": first_number(at_large, "p50_low_ms"),
            f"b{large}_high": first_number(at_large, "p50_high_ms"),
            # compression's gain alone: against the teacher's form in the same runtime
            f"speedup_b{large}": first_number(at_large, "speedup_vs_teacher_same_runtime"),
            f"speedup_b{large}_low": first_number(at_large,
                                                  "speedup_vs_teacher_same_runtime_low"),
            f"speedup_b{large}_high": first_number(at_large,
                                                   "speedup_vs_teacher_same_runtime_high"),
        }
        if entry.accuracy_of == TEACHER and not math.isnan(row[f"b{large}_ms"]):
            row[f"speedup_b{large}"] = 1.0  # a teacher form is its runtime's reference
        if math.isnan(row["accuracy"]) and math.isnan(row[f"b{large}_ms"]):
            continue
        rows.append(row)
    df = pd.DataFrame(rows)
    df.attrs["large"] = large
    df.attrs["score"] = score
    return df


def accuracy_tie_note(a: float, b: float, n: float, score: Score = ACCURACY) -> str:
    """How a difference between two accuracies on the same ``n`` test images reads: in test
    images, and whether it is a tie (``noise.tie``). Nothing for a score without a binomial
    interval (mAP): a count of test images would be made up."""
    if not score.binomial or math.isnan(n) or n <= 0:
        return ""
    images = round(abs(a - b) * n)
    verdict = ("a tie: inside the 95 % interval" if tie(accuracy_estimate(a, int(n)),
                                                          accuracy_estimate(b, int(n)))
               else "outside the noise")
    return f"{images} of {int(n)} test images; {verdict}"


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
    ok = df[within_budget(df["drop_points"], max_drop) & df[cost].notna()]
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


def _with_interval(value: float, low: float, high: float, kind: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    text = fmt_value(value, kind)
    if math.isnan(low) or math.isnan(high) or (low == high == value):
        return text
    return f"{text} ({fmt_value(low, kind).rstrip('x')}-{fmt_value(high, kind)})"


def models_markdown(df: pd.DataFrame) -> str:
    """The models table with readable headers and units; accuracy, latency and speed-up carry
    their 95 % intervals in brackets."""
    large = df.attrs.get("large", 64)
    shown = df.copy()
    shown["accuracy_ci"] = [_with_interval(r["accuracy"], r["acc_low"], r["acc_high"], "pct")
                            for _, r in df.iterrows()]
    formats = {"drop_points": "pts", "params": "int", "macs": "mega", "file_bytes": "kb"}
    headers = {"model": "model", "runtime": "runtime",
               "accuracy_ci": score_header(df.attrs.get("score", ACCURACY)),
               "drop_points": "drop vs teacher (pts)", "params": "params", "macs": "MACs",
               "file_bytes": "file KB"}
    for col in df.columns:
        if col.endswith("_ms"):
            batch = col[:-3]
            if batch == f"b{large}":
                shown[col] = [_with_interval(r[col], r[f"{batch}_low"], r[f"{batch}_high"], "ms")
                              for _, r in df.iterrows()]
                headers[col] = f"{batch} p50 ms (95 % interval over rounds)"
            else:
                formats[col], headers[col] = "ms", f"{batch} p50 ms"
        elif col.startswith("speedup_") and not col.endswith(("_low", "_high")):
            shown[col] = [_with_interval(r[col], r[f"{col}_low"], r[f"{col}_high"], "x")
                          for _, r in df.iterrows()]
            headers[col] = f"speed-up vs teacher, same runtime ({col.split('_')[1]})"
    return markdown_table(shown, formats, headers)


def score_header(score: Score) -> str:
    """The score column's header: a percentage with its interval, or mAP x 100 (none)."""
    if score.binomial:
        return f"{score.name} % (95 % interval)"
    return f"{score.name} x 100"


def score_axis(score: Score, split: str = "test") -> str:
    """A chart's score axis: the percentage and its bars, or mAP x 100 (no interval bars)."""
    if score.binomial:
        return f"{split} {score.name} (%), bars: 95 % interval"
    return f"{split} {score.name} (x 100)"


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
    shipped: str | None = None,
    x_interval: tuple[str, str] | None = None,
    score: Score = ACCURACY,
) -> Path | None:
    """Accuracy (y) against a cost (x, log scale when it spans >20x) with the Pareto front.

    Each point has its own colour AND marker (named in the legend), vertical bars for the
    accuracy's 95 % interval (``acc_low`` / ``acc_high`` columns when present) and horizontal
    bars for ``x_interval`` columns; ``shipped`` (the final model) is ringed by a large star and
    labelled. ``reference`` (the teacher's accuracy %) and ``max_drop`` draw the budget line.
    ``score`` labels the y axis (accuracy, or mAP x 100 on detection data).
    Returns None when no point has both coordinates.
    """
    data = df[df[[label, x, "accuracy"]].notna().all(axis=1)]
    if data.empty:
        return None
    acc = data["accuracy"].to_numpy() * 100
    xs = data[x].to_numpy(dtype=float)
    front = np.array(pareto_front(xs.tolist(), acc.tolist()))
    fig = Figure(figsize=(9, 4.8))
    ax = fig.subplots()
    order = np.argsort(xs[front])
    if front.sum() > 1:
        ax.step(xs[front][order], acc[front][order], where="post", color="black", alpha=0.35,
                linewidth=1.5, label="Pareto front (ringed points)")
    else:  # one point: a step line has no length; the ring alone says it
        ax.plot([], [], color="black", alpha=0.35, linewidth=1.5,
                label="Pareto front (ringed point)")
    for i, (_, row) in enumerate(data.iterrows()):
        colour, marker = f"C{i % 10}", MARKERS[i % len(MARKERS)]
        yerr = None
        if {"acc_low", "acc_high"} <= set(row.index) and not math.isnan(row["acc_low"]):
            yerr = [[acc[i] - row["acc_low"] * 100], [row["acc_high"] * 100 - acc[i]]]
        xerr = None
        if x_interval and not math.isnan(row.get(x_interval[0], math.nan)):
            xerr = [[xs[i] - row[x_interval[0]]], [row[x_interval[1]] - xs[i]]]
        if yerr or xerr:
            ax.errorbar([xs[i]], [acc[i]], yerr=yerr, xerr=xerr, fmt="none", ecolor=colour,
                        alpha=0.45, capsize=2, linewidth=1)
        name = str(row[label])
        ax.scatter([xs[i]], [acc[i]], s=70, color=colour, marker=marker,
                   edgecolors="black" if front[i] else "none", linewidths=1.5, zorder=3,
                   label=name + (" (shipped)" if name == shipped else ""))
        if name == shipped:
            ax.scatter([xs[i]], [acc[i]], s=420, marker="*", facecolors="none",
                       edgecolors="black", linewidths=1.2, zorder=4)
            ax.annotate("shipped", (xs[i], acc[i]), textcoords="offset points", xytext=(10, -14),
                        fontsize=8, fontweight="bold")
    if reference is not None and max_drop is not None:
        ax.axhline(reference - max_drop, color="tab:red", linestyle="--", linewidth=1,
                   label=f"budget: teacher - {max_drop:g} points")
    if (xs > 0).all() and xs.max() / max(xs.min(), 1e-12) > 20:
        ax.set_xscale("log")
    ax.margins(x=0.08, y=0.08)
    ax.set_xlabel(x_label)
    ax.set_ylabel(score_axis(score))
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return save_figure(fig, path)


def plot_histories(histories: dict[str, pd.DataFrame], path: str | Path,
                   score: Score = ACCURACY) -> Path | None:
    """Validation score and training cross-entropy per epoch, one line per training run.

    Cross-entropy on the labels (``train_ce``) is the one loss every run shares; distillation's
    total loss adds a KD term on another scale (T^2-weighted KL), so it gets its own panel.
    ``score``: the validation column is ``val_<field>`` (``val_map`` for a detector, whose
    loss panel shows its total training loss)."""
    val = f"val_{score.field}"
    usable = {k: h for k, h in histories.items() if {"epoch", val} <= set(h.columns)}
    if not usable:
        return None
    with_kd = {k: h for k, h in usable.items() if "train_kd" in h.columns}
    fig = Figure(figsize=(15 if with_kd else 10, 4))
    axes = fig.subplots(1, 3 if with_kd else 2)
    ax_acc, ax_ce = axes[0], axes[1]
    for i, (name, h) in enumerate(usable.items()):
        style = {"marker": MARKERS[i % len(MARKERS)], "markersize": 4, "color": f"C{i % 10}",
                 "label": name}
        ax_acc.plot(h["epoch"], h[val] * 100, **style)
        ce = "train_ce" if "train_ce" in h.columns else "train_loss"
        if ce in h.columns:
            ax_ce.plot(h["epoch"], h[ce], **style)
        if name in with_kd:
            axes[2].plot(h["epoch"], h["train_kd"], **style)
    if score is ACCURACY:
        ax_acc.set(xlabel="epoch", ylabel="val accuracy (%)", title="Validation accuracy")
        ax_ce.set(xlabel="epoch", ylabel="cross-entropy on the labels", yscale="log",
                  title="Training cross-entropy")
    else:
        ax_acc.set(xlabel="epoch", ylabel=f"val {score.name} (x 100)",
                   title=f"Validation {score.name}")
        ax_ce.set(xlabel="epoch", ylabel="training loss (the detector's total)", yscale="log",
                  title="Training loss")
    if with_kd:
        axes[2].set(xlabel="epoch", ylabel="KD loss (soft targets)", yscale="log",
                    title="Distillation term (its own scale)")
    for ax in axes:
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


def plot_sensitivity(
    df: pd.DataFrame, path: str | Path, baseline: float | None = None
) -> Path | None:
    """Validation accuracy after pruning each layer alone at each ratio: flat lines are safe to
    prune. Layers are numbered in network order ("conv 1 of 6"), with the module name that
    ``prune.ignore_layers`` takes; ``baseline`` (the unpruned student's validation accuracy)
    is the dashed line and every curve's point at ratio 0."""
    if not {"layer", "ratio", "accuracy"} <= set(df.columns) or df.empty:
        return None
    fig = Figure(figsize=(9, 4.5))
    ax = fig.subplots()
    layers = list(dict.fromkeys(df["layer"]))
    for i, layer in enumerate(layers):
        group = df[df["layer"] == layer].sort_values("ratio")
        ratios, accs = group["ratio"].tolist(), (group["accuracy"] * 100).tolist()
        if baseline is not None:
            ratios, accs = [0.0, *ratios], [baseline * 100, *accs]
        ax.plot(ratios, accs, marker=MARKERS[i % len(MARKERS)], color=f"C{i % 10}",
                label=f"conv {i + 1} of {len(layers)} ({layer})")
    if baseline is not None:
        ax.axhline(baseline * 100, color="black", linestyle="--", linewidth=1,
                   label=f"unpruned student ({baseline * 100:.2f} %)")
    ax.set(xlabel="fraction of this layer's channels removed (others untouched)",
           ylabel="validation accuracy (%)", title="Per-layer pruning sensitivity")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, ncol=1 + len(layers) // 12, loc="center left",
              bbox_to_anchor=(1.01, 0.5))
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


def read_selection(metrics_dir: Path) -> dict[str, Any] | None:
    """select_final's decision (metrics/selection.json); None when select_final has not run."""
    path = metrics_dir / SELECTION_JSON
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ShrinkflowError(f"{path}: not valid JSON ({exc})") from exc
    return data if isinstance(data, dict) else None


def _final_lines(selection: dict[str, Any] | None, df: pd.DataFrame) -> list[str]:
    """The report's lead: the model select_final chose, with its intervals; the runtime's gain
    that the same-runtime speed-up leaves out."""
    if selection is None:
        return ["- No final model selected (metrics/selection.json not found: run the "
                "select_final stage)."]
    if selection.get("status") != "selected":
        return [f"- **No model within the budget**: {selection.get('reason', '?')}. See "
                "\"No model within the budget\" below."]
    name = selection["final_model"]
    score = df.attrs.get("score", ACCURACY)
    c = next((c for c in selection.get("candidates", []) if c["model"] == name), {})
    parts = [f"**Final model: `{name}`** ({c.get('runtime', '?')}, "
             f"`{selection.get('final_file', '?')}`): {score.name} "
             + _score_text(c, score) + (" %" if score.binomial else " (x 100)")
             + f" on {c.get('test_images', '?')} test images, drop "
             f"{c.get('drop_points', math.nan):.2f} pts (budget "
             f"{selection.get('max_drop_points', math.nan):g})"]
    teacher = df[df["model"] == TEACHER]
    if len(teacher) and c.get("file_bytes"):
        parts.append(f"{float(teacher['file_bytes'].iloc[0]) / c['file_bytes']:.1f}x smaller "
                     "file than the teacher's")
    if c.get("speedup") is not None:
        parts.append(_with_interval(c["speedup"], _nan(c.get("speedup_low")),
                                    _nan(c.get("speedup_high")), "x")
                     + " faster than the teacher in the same runtime at batch "
                     f"{selection.get('batch_size', '?')}")
    lines = ["- " + ", ".join(parts) + ".", f"- Why: {selection.get('reason', '?')}."]
    large = df.attrs.get("large", 64)
    col = f"b{large}_ms"
    for _, row in df.iterrows():  # the runtime's gain: teacher torch -> teacher export
        if (row["model"] != TEACHER and row["model"] in _teacher_forms(df) and col in df.columns
                and len(teacher) and not math.isnan(row[col])):
            gain = float(teacher[col].iloc[0]) / row[col]
            lines.append(f"- Runtime's gain alone: `{row['model']}` runs {gain:.2f}x faster than "
                         f"the PyTorch `{TEACHER}` at batch {large} (same weights); speed-ups "
                         "below are within one runtime.")
    return lines


def _score_text(candidate: dict[str, Any], score: Score) -> str:
    """A selection.json candidate's score x 100 as the page shows it, with its interval when
    there is one (select_final records none for mAP); the unit is the caller's."""
    value, low, high = (_nan(candidate.get(score_field(f, score)))
                        for f in ("acc", "acc_low", "acc_high"))
    return _with_interval(value, low, high, "pct")


def _nan(value: Any) -> float:
    return math.nan if value is None else float(value)


def _teacher_forms(df: pd.DataFrame) -> set[str]:
    return set(df.attrs.get("teacher_forms", ()))


def none_within_budget_lines(selection: dict[str, Any],
                             score: Score = ACCURACY) -> list[str]:
    """Nothing within budget: every candidate against the budget, and what to change."""
    budget = selection.get("max_drop_points", math.nan)
    cands = sorted(selection.get("candidates", []), key=lambda c: c["drop_points"])
    table = pd.DataFrame([{
        "model": c["model"], "runtime": c["runtime"],
        "accuracy": _score_text(c, score),
        "drop_points": c["drop_points"], "over": c["drop_points"] - budget,
        "file_bytes": c["file_bytes"],
        "speedup": _with_interval(_nan(c.get("speedup")), _nan(c.get("speedup_low")),
                                  _nan(c.get("speedup_high")), "x"),
    } for c in cands])
    lines = ["## No model within the budget", "",
             f"No candidate is within `budget.max_drop_points` = {budget:g} points of the "
             f"teacher ({selection.get('reason', '')}). Nothing was shipped: models/final/ "
             "holds only NO_MODEL.md, and the report stage exits non-zero so that the pipeline "
             "does not look finished.", ""]
    if len(table):
        lines += [markdown_table(table, {"drop_points": "pts", "over": "pts", "file_bytes": "kb"},
                                 {"model": "model", "runtime": "runtime",
                                  "accuracy": score_header(score),
                                  "drop_points": "drop (pts)", "over": "over budget by (pts)",
                                  "file_bytes": "file KB",
                                  "speedup": "speed-up, same runtime"}), ""]
    lines += ["What to change, cheapest first:", "",
              "- a larger budget, if the drop shown is acceptable: `budget.max_drop_points` in "
              "params.yaml (only select_final and the report rerun; prune reruns too but writes "
              "the same model);",
              "- longer training of the student: `distill.train.epochs` (and "
              "`prune.train.epochs` when pruning costs the points);",
              "- a bigger student: `distill.student.widths` (or a smaller `prune.ratio`);",
              "- on a small test set, a drop within the accuracy's 95 % interval is noise: "
              "compare the intervals above before spending compute." if score.binomial else
              f"- on a small test set a drop of a few {score.name} points may be noise "
              f"({score.name} has no interval here): more test images tell.", ""]
    return lines


# --- the student ladder -----------------------------------------------------------------------


def ladder_table(df: pd.DataFrame, models: list[ModelEntry], metrics: dict[str, Any],
                 max_drop: float) -> pd.DataFrame:
    """The students side by side in one runtime, smallest first: distill.student's fp32 ONNX form
    and every rung of ``ladder.rungs`` (their models ``rung_NAME``), with the budget verdict,
    the epochs each trained (``ladder.early_stop``) and what distillation bought each (when its
    scratch control ran). Empty without rungs."""
    rungs = [e.name for e in models if e.rung]
    if not rungs:
        return pd.DataFrame()
    student = [e.name for e in models
               if e.accuracy_of == STUDENT and Path(e.file).suffix == ".onnx"]
    ladder = df[df["model"].isin(student + rungs)].copy()
    ladder["within"] = ["yes" if ok else "no"
                        for ok in within_budget(ladder["drop_points"], max_drop)]
    ladder["epochs"] = [
        "-" if (done := metrics.get(model_key(name, "epochs_trained"))) is None
        else f"{done} (stopped early)" if metrics.get(model_key(name, "stopped_early"))
        else str(done) for name in ladder["model"]]
    ladder["kd_gain"] = [first_number(metrics, KD_GAIN if name in student
                                      else model_key(name, KD_GAIN))
                         for name in ladder["model"]]
    return ladder.sort_values(["params", "macs"], kind="stable")  # equal params: input size


def ladder_lines(ladder: pd.DataFrame, max_drop: float, shipped: str | None) -> list[str]:
    """The ladder's table, and which way to go: the smallest student within the budget, or,
    when none is, whether size still pays (a bigger rung), or training or the budget must
    change."""
    large = ladder.attrs.get("large", 64)
    score = ladder.attrs.get("score", ACCURACY)
    shown = ladder.assign(
        accuracy_ci=[_with_interval(r["accuracy"], r["acc_low"], r["acc_high"], "pct")
                     for _, r in ladder.iterrows()],
        model=[f"**{m}** (shipped)" if m == shipped else m for m in ladder["model"]])
    table = markdown_table(
        shown, {"params": "int", "drop_points": "pts", f"b{large}_ms": "ms",
                f"speedup_b{large}": "x", "kd_gain": "pts"},
        {"model": "student", "params": "params", "accuracy_ci": score_header(score),
         "drop_points": "drop (pts)", "within": f"within {max_drop:g}",
         f"b{large}_ms": f"b{large} p50 ms", f"speedup_b{large}": "speed-up, same runtime",
         "epochs": "epochs trained", "kd_gain": "KD gain (pts)"})
    lines = ["## The student ladder", "",
             "distill.student and each rung of `ladder.rungs`, as fp32 ONNX models in ONNX "
             "Runtime, smallest first. KD gain: the distilled student's test accuracy minus the "
             "same student's trained from scratch (`ladder.scratch` says which rungs get that "
             "control).", "", table, ""]
    within = ladder[ladder["within"] == "yes"]
    if len(within):
        first = within.iloc[0]
        lines.append(f"- Smallest student within the budget: `{first['model']}` "
                     f"({int(first['params']):,} params, drop {first['drop_points']:.2f} "
                     "points). Rungs above it cost training time for accuracy the budget does "
                     "not ask for; rungs below it can leave `ladder.rungs`.")
        return [*lines, ""]
    if shipped is not None and shipped not in set(ladder["model"]):
        lines.append(f"- No student of the ladder is within {max_drop:g} points of the teacher as "
                     f"a distilled fp32 model; `{shipped}` shipped from the main chain "
                     "(distill.student compressed further). For a rung to compete:")
    else:
        lines.append(f"- No student is within {max_drop:g} points of the teacher. Which way to "
                     "go:")
    if len(ladder) >= 2:
        below, top = ladder.iloc[-2], ladder.iloc[-1]
        n = top["test_images"]
        gain = (top["accuracy"] - below["accuracy"]) * 100
        noise = score.binomial and not math.isnan(n) and tie(
            accuracy_estimate(top["accuracy"], int(n)),
            accuracy_estimate(below["accuracy"], int(n)))
        if gain > 0 and not noise:
            lines.append(f"  - size still pays: `{below['model']}` -> `{top['model']}` gained "
                         f"{gain:.2f} points (outside the noise): add a bigger rung, about "
                         "twice the largest one's widths, to `ladder.rungs`;")
        else:
            lines.append(f"  - size stopped paying: `{below['model']}` -> `{top['model']}` "
                         f"changed accuracy by {gain:+.2f} points"
                         + (" (inside the noise)" if noise else "") + ": train longer "
                         "(`distill.train.epochs`) before adding rungs;")
    closest = ladder.loc[ladder["drop_points"].idxmin()]
    lines += [f"  - or a budget of {closest['drop_points']:.2f} points "
              f"(`budget.max_drop_points`) admits `{closest['model']}`.", ""]
    return lines


def _headline(df: pd.DataFrame, metrics: dict[str, Any], max_drop: float,
              selection: dict[str, Any] | None) -> list[str]:
    lines = _final_lines(selection, df)
    if isinstance(metrics.get("distill_input_size"), str):
        lines.append(f"- Student input size: {metrics['distill_input_size']} (what its network "
                     "sees: `distill.input_size` downsamples inside the model, whose files still "
                     "take full-size images; MACs at this size).")
    field = df.attrs.get("score", ACCURACY).field
    student = first_number(metrics, model_key("student", field))
    scratch = first_number(metrics, model_key("student_scratch", field))
    if not (math.isnan(student) or math.isnan(scratch)):
        n = first_number(metrics, model_key("student", "test_images"))
        note = accuracy_tie_note(student, scratch, n, df.attrs.get("score", ACCURACY))
        lines.append(f"- Distillation vs the same student trained from scratch: "
                     f"{(student - scratch) * 100:+.2f} pts" + (f" ({note})." if note else "."))
    if "file_bytes" in df.columns:
        best = best_within(df, max_drop, "file_bytes")
        lines.append(f"- Smallest file within {max_drop:g} points of the teacher: "
                     + (f"`{best['model']}` ({best['runtime']})." if best is not None
                        else "none."))
    return lines


def build_report(
    metrics_dir: str | Path, out_dir: str | Path, max_drop: float, models: list[ModelEntry],
    score: Score = ACCURACY,
) -> tuple[Path, list[Path], list[str]]:
    """Write ``summary.md`` and the PNG charts into ``out_dir``; returns (page, charts, notes).

    ``models`` is the pipeline's model list (``metric_keys.read_model_list``): the table's rows.
    ``max_drop`` is ``budget.max_drop_points``. The page is written whatever select_final
    decided: with nothing within budget it leads with the candidates against the budget.
    ``score`` is the task's headline score (``metric_keys.task_score``): mAP on detection data.
    """
    metrics_dir, out_dir = Path(metrics_dir), Path(out_dir)
    metrics = load_metrics(metrics_dir)
    selection = read_selection(metrics_dir)
    notes: list[str] = []
    bench = _read_csv(metrics_dir / BENCH_CSV, notes) if (metrics_dir / BENCH_CSV).is_file() \
        else None
    df = model_table(metrics, models, bench, score)
    df.attrs["teacher_forms"] = tuple(m.name for m in models if m.accuracy_of == TEACHER)
    teacher_pct = teacher_accuracy(metrics, score) * 100
    sizes = bench_batch_sizes(bench)
    large = f"b{sizes[-1]}" if sizes else "b64"
    if not sizes:
        notes.append("`benchmark.csv` has no latencies: speed columns and chart are empty.")
    # the shipped model's name; None when select_final has not run or shipped nothing
    shipped = (selection.get("final_model") if selection and selection.get("status") == "selected"
               else None)
    heading = score.heading  # "Accuracy", or "mAP" on detection data; same chart files
    charts: list[tuple[str, Path | None]] = [
        (f"{heading} vs latency", plot_tradeoff(
            df, f"{large}_ms", f"median latency at batch {large[1:]} (ms), bars: 95 % interval "
            "over the rounds", f"{heading} vs latency ({large})",
            out_dir / "accuracy_vs_latency.png", reference=teacher_pct, max_drop=max_drop,
            shipped=shipped, x_interval=(f"{large}_low", f"{large}_high"), score=score)),
        (f"{heading} vs size", plot_tradeoff(
            df.assign(file_kb=df["file_bytes"] / 1024), "file_kb", "file size (KB)",
            f"{heading} vs model file size", out_dir / "accuracy_vs_size.png",
            reference=teacher_pct, max_drop=max_drop, shipped=shipped, score=score)),
    ]
    histories = {}
    for name in HISTORIES:
        h = _read_csv(metrics_dir / f"history_{name}.csv", notes)
        if h is not None:
            histories[name] = h
    ladder = ladder_table(df, models, metrics, max_drop)
    ladder.attrs["large"] = df.attrs.get("large", 64)
    ladder.attrs["score"] = score
    if len(ladder):
        charts.append((f"The ladder: {score.name} vs parameters", plot_tradeoff(
            ladder, "params", "parameters", f"The student ladder: {score.name} vs size",
            out_dir / "ladder.png", reference=teacher_pct, max_drop=max_drop, shipped=shipped,
            score=score)))
    charts.append(("Training curves", plot_histories(histories, out_dir / "training_curves.png",
                                                     score)))
    evaluated_as = {e.name: e.accuracy_of for e in models}.get(shipped) if shipped else None
    if evaluated_as:  # a benchmark-only final model shares its weights' predictions
        pairs = _read_csv(metrics_dir / f"confusion_{evaluated_as}.csv", notes)
        if pairs is not None:
            charts.append((f"Confusion matrix ({shipped})", plot_confusion(
                pairs, f"Confusion matrix: {shipped} (test set)",
                out_dir / f"confusion_{evaluated_as}.png")))
    sens = _read_csv(metrics_dir / "prune_sensitivity.csv", notes)
    if sens is not None:
        base = first_number(metrics, "prune_val_student_acc")
        sens_png = plot_sensitivity(sens, out_dir / "prune_sensitivity.png",
                                    None if math.isnan(base) else base)
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
    none = selection is not None and selection.get("status") != "selected"
    lines = ["# shrinkflow report", "", *_headline(df, metrics, max_drop, selection), ""]
    if none:
        lines += none_within_budget_lines(selection, score)
    if len(ladder):
        lines += ladder_lines(ladder, max_drop, shipped)
    lines += ["## Models", "", models_markdown(df), "",
              ("Accuracy is on the test split, with its 95 % Wilson interval over the test images "
               "(small test sets: wide); drop = teacher minus model, in percentage points"
               if score.binomial else
               f"{score.name} is COCO mAP@[.5:.95] on the test split, x 100 (no interval: "
               "unlike accuracy it is not a share of test images right); drop = teacher minus "
               f"model, in {score.name} points")
              + (" (the teacher ensemble's accuracy minus the model's)"
                 if reference_accuracy_key(metrics) == ENSEMBLE_ACC else "") + ". "
              "Latency is the median of the benchmark's timed calls, with the 95 % interval of "
              "the median over its rounds; speed-up = the median of the teacher's form in the "
              "same runtime (PyTorch or ONNX Runtime) / the model's, timed in the same rounds of "
              "one run, with the interval of the per-round ratios. Two figures whose intervals "
              "hold each other's value are a tie (shrinkflow.measure.noise)"
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
