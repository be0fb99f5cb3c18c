"""Budget-mode pruning (``prune.ratio: auto``): per-layer widths chosen against an accuracy budget.

A fixed ratio removes the same share of every layer; the sensitivity scan shows that layers differ
a lot in what that costs. Budget mode turns the scan into a plan and follows it step by step:

1. **Predicted cost per layer.** For each prunable group (its root layer), the scan's accuracy
   after pruning that group alone gives a predicted drop at any width (linear between the scanned
   ratios, 0 at ratio 0, never decreasing); its MACs give the MACs saved. With
   ``prune.target: latency`` the saving is instead ONNX Runtime batch-64 latency, measured once
   per layer at a few widths (a NetAdapt-style lookup table), so the plan favours removals that
   are faster where the model runs, not only smaller on paper.
2. **Greedy plan.** Starting from the full widths, repeatedly take the one removal (one layer down
   to a narrower width, a multiple of ``round_to``) with the smallest predicted drop per unit
   saved.
   Cut that sequence into ``iterative_steps`` steps of equal saving; each step's widths contain
   the previous step's, so the model only ever shrinks.
3. **Step loop.** Prune to the step's widths, fine-tune with KD, measure validation accuracy; stop
   at the first step whose drop against the unpruned student exceeds ``max_drop_points`` and keep
   the last step within budget (step 0 is the student itself).

Widths never go below ``1 - max(sensitivity_ratios)`` of the original (the scan says nothing
beyond that) nor below ``round_to``. Groups the scan skipped (``sensitivity_max_layers``) borrow
the curve of the nearest scanned group.
"""

from __future__ import annotations

import copy
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from shrinkflow.compress.prune import (
    FineTune,
    build_pruner,
    group_roots,
    make_importance,
    pruning_step,
    resolve_ignored,
    split_epochs,
    taylor_gradients,
)
from shrinkflow.measure.noise import within_budget
from shrinkflow.measure.stopwatch import time_calls
from shrinkflow.model_files.export_onnx import export_onnx
from shrinkflow.model_files.open import ort_session
from shrinkflow.nets.zoo import count_macs, count_params
from shrinkflow.params.prune import PruneParams
from shrinkflow.training.loop import Split

LATENCY_BATCH = 64  # the batch size the pipeline's headline latency uses
LATENCY_POINTS = 3  # widths measured per layer besides the full one; linear in between
LATENCY_ROUNDS = 10  # interleaved rounds over all table entries ...
LATENCY_CALLS = 3  # ... each timing this many ORT calls per entry (median of all of them)
STEP_FIELDS = ["step", "channels", "macs", "params", "predicted_drop_points",
               "predicted_saving", "val_acc", "val_drop_points", "within_budget"]
LATENCY_FIELDS = ["layer", "channels", "latency_ms"]

Widths = dict[str, int]
Curve = tuple[np.ndarray, np.ndarray, np.ndarray]  # (ratios, drops in points, MACs)


@dataclass
class BudgetOutcome:
    """What budget mode did; the stage writes it to prune.json and prune_steps.csv."""

    model: nn.Module
    widths: Widths
    chosen_step: int
    stop_reason: str
    steps: list[dict[str, Any]] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)
    latency_table: list[dict[str, Any]] = field(default_factory=list)
    acc_before_finetune: float | None = None
    seconds: float = 0.0


# --- widths ------------------------------------------------------------------------------------


def out_width(module: nn.Module) -> int:
    """Output channels of a conv / features of a linear layer (a group's width)."""
    return module.out_channels if isinstance(module, nn.Conv2d) else module.out_features


def current_widths(model: nn.Module, layers: list[str]) -> Widths:
    modules = dict(model.named_modules())
    return {name: out_width(modules[name]) for name in layers}


def conv_widths(model: nn.Module) -> Widths:
    """Output channels of every conv layer, in model order (what ``prune_channels`` shows)."""
    return {n: m.out_channels for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}


def format_widths(widths: Widths) -> str:
    """``features.0=8 features.4=16``: one string, one dvc exp show column."""
    return " ".join(f"{name}={n}" for name, n in widths.items())


def width_options(full: int, round_to: int, max_ratio: float) -> list[int]:
    """Smaller widths a group may take, widest first: multiples of ``round_to``, at least
    ``round_to`` and at least ``(1 - max_ratio)`` of ``full`` (the scanned range)."""
    step = max(round_to, 1)
    floor = max(step, int(np.ceil(full * (1 - max_ratio) - 1e-9)))
    top = (full - 1) // step * step
    return [w for w in range(top, floor - 1, -step) if w >= floor]


# --- the scan as a cost model ------------------------------------------------------------------


def scan_curves(
    rows: list[dict[str, Any]], layers: list[str], base_acc: float
) -> dict[str, Curve]:
    """Per layer: (ratios, predicted drop in points, MACs) with the point (0, 0, None) in front.

    Drops are clipped at 0 and made non-decreasing (a scan trial that happened to score above the
    student does not make more pruning look free). A layer the scan skipped takes the nearest
    scanned layer's curve (by model order).
    """
    scanned: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        scanned.setdefault(row["layer"], []).append(row)
    if not scanned:
        raise ValueError("budget mode needs the sensitivity scan's rows")
    order = {name: i for i, name in enumerate(layers)}
    curves = {}
    for layer in layers:
        source = layer if layer in scanned else min(
            scanned, key=lambda s: abs(order.get(s, 0) - order[layer]))
        pts = sorted(scanned[source], key=lambda r: r["ratio"])
        ratios = np.array([0.0] + [float(r["ratio"]) for r in pts])
        drops = np.maximum.accumulate(np.clip(
            [0.0] + [100 * (base_acc - float(r["accuracy"])) for r in pts], 0, None))
        macs = np.array([np.nan] + [float(r["macs"]) for r in pts])
        curves[layer] = (ratios, drops, macs)
    return curves


def predicted_drop(curve: Curve, full: int, width: int) -> float:
    """Predicted accuracy drop (points) of this group alone at ``width``."""
    ratios, drops, _ = curve
    return float(np.interp(1 - width / full, ratios, drops))


def macs_saved(curve: Curve, full: int, width: int, base_macs: int) -> float:
    """MACs saved by this group alone at ``width`` (from the scan's MACs, linear in between)."""
    ratios, _, macs = curve
    macs = macs.copy()
    macs[0] = base_macs
    return float(base_macs - np.interp(1 - width / full, ratios, macs))


# --- measured latency table (target: latency) ---------------------------------------------------


def ort_latencies_ms(models: list[nn.Module], input_shape: tuple[int, ...],
                     batch: int = LATENCY_BATCH, rounds: int = LATENCY_ROUNDS) -> list[float]:
    """Median ONNX Runtime latency (ms) of each model at ``batch``, timed in interleaved rounds.

    Each round times every model in turn, so a burst of load from other processes hits all of
    them alike instead of inflating whichever model happened to run then (the benchmark stage
    interleaves for the same reason).
    """
    feed_x = np.random.default_rng(0).random((batch, *input_shape), dtype=np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        sessions = []
        for i, model in enumerate(models):
            path = Path(tmp) / f"probe{i}.onnx"
            export_onnx(model, input_shape, path)
            sessions.append(ort_session(path))
        feeds = [{s.get_inputs()[0].name: feed_x} for s in sessions]
        times: list[list[float]] = [[] for _ in models]
        for _ in range(rounds):
            for i, (session, feed) in enumerate(zip(sessions, feeds, strict=True)):
                times[i] += time_calls(lambda s=session, f=feed: s.run(None, f), warmup=1,
                                       repeats=LATENCY_CALLS)
    return [float(np.median(t)) for t in times]


def prune_to_widths(
    model: nn.Module, input_shape: tuple[int, ...], widths: Widths, params: PruneParams,
    seed: int, train: Split | None = None,
) -> None:
    """Prune ``model`` in place so each named group has exactly its width in ``widths``.

    torch-pruning's ``pruning_ratio_dict`` takes a ratio per layer; it keeps
    ``int(channels * (1 - ratio))``, so the ratio aims half a channel above the wanted width
    to be immune to float rounding. Channels go by ``params.importance`` within each group.
    """
    modules = dict(model.named_modules())
    ratio_dict = {}
    for name, keep in widths.items():
        now = out_width(modules[name])
        if keep < now:
            ratio_dict[modules[name]] = 1 - (keep + 0.5) / now
    if not ratio_dict:
        return
    if params.importance == "taylor":
        taylor_gradients(model, train, params.train.batch_size, seed)
    ignored = resolve_ignored(model, list(params.ignore_layers))
    pruner = build_pruner(model, input_shape, make_importance(params.importance), 0.0,
                          ignored=ignored, ratio_dict=ratio_dict)
    pruning_step(pruner, seed)
    model.zero_grad(set_to_none=True)


def latency_table(
    model: nn.Module, input_shape: tuple[int, ...], options: dict[str, list[int]],
    params: PruneParams, measure: Callable[[list[nn.Module]], list[float]] | None = None,
    log: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Latency with each group alone pruned to a few of its widths (plus the unpruned model).

    Rows ``{layer, channels, latency_ms}``; the unpruned model is the row with layer ``""``.
    ``measure`` maps models to latencies, by default ORT batch-64 medians over interleaved
    rounds (tests pass a cheap stand-in).
    """
    measure = measure or (lambda ms: ort_latencies_ms(ms, input_shape))
    entries: list[tuple[str, int, nn.Module]] = [("", 0, model)]
    for layer, widths in options.items():
        picks = [widths[round(i * (len(widths) - 1) / max(LATENCY_POINTS - 1, 1))]
                 for i in range(min(LATENCY_POINTS, len(widths)))]
        for width in sorted(set(picks), reverse=True):
            trial = copy.deepcopy(model).cpu().eval()
            prune_to_widths(trial, input_shape, {layer: width}, params, params.seed)
            entries.append((layer, width, trial))
    start = time.perf_counter()
    latencies = measure([m for _, _, m in entries])
    rows = [{"layer": layer, "channels": width, "latency_ms": round(ms, 5)}
            for (layer, width, _), ms in zip(entries, latencies, strict=True)]
    log(f"[latency] ORT batch {LATENCY_BATCH}, {len(rows)} models in "
        f"{time.perf_counter() - start:.1f}s: unpruned {rows[0]['latency_ms']:.3f} ms; "
        + "; ".join(f"{r['layer']}={r['channels']}: {r['latency_ms']:.3f}" for r in rows[1:]))
    return rows


def latency_saved(table: list[dict[str, Any]], layer: str, full: int, width: int) -> float:
    """Milliseconds saved by ``layer`` alone at ``width``, linear between measured widths."""
    base = next(r["latency_ms"] for r in table if r["layer"] == "")
    pts = sorted([(full, base)] + [(r["channels"], r["latency_ms"]) for r in table
                                   if r["layer"] == layer])
    return float(base - np.interp(width, [p[0] for p in pts], [p[1] for p in pts]))


# --- the plan ----------------------------------------------------------------------------------


def greedy_moves(
    full: Widths, options: dict[str, list[int]], drop: Callable[[str, int], float],
    saved: Callable[[str, int], float],
) -> list[tuple[str, int, float, float]]:
    """Every removal in order of least predicted drop per unit saved: (layer, width, total
    predicted drop, total saving) after each move.

    A move may jump a layer past several widths at once: measured savings are not convex (on a
    loaded machine one narrower width can time slower than the full layer), and a one-width
    look-ahead would then never prune that layer and pick a far more sensitive one instead.
    Ties go to the smaller move, which keeps the steps fine-grained.
    """
    widths = dict(full)
    nxt = {layer: 0 for layer in full}  # index of each layer's next option
    moves = []
    total_drop = total_saved = 0.0
    while True:
        best = None
        for layer in full:
            opts = options.get(layer, [])
            here_drop, here_saved = drop(layer, widths[layer]), saved(layer, widths[layer])
            for j in range(nxt[layer], len(opts)):
                d = max(drop(layer, opts[j]) - here_drop, 0.0)
                s = saved(layer, opts[j]) - here_saved
                key = (d / s if s > 0 else float("inf"), s)
                if best is None or key < best[0]:
                    best = (key, layer, j, d, s)
        if best is None:
            return moves
        _, layer, j, d, s = best
        widths[layer] = options[layer][j]
        nxt[layer] = j + 1
        total_drop += d
        total_saved += max(s, 0.0)
        moves.append((layer, widths[layer], total_drop, total_saved))


def plan_steps(full: Widths, moves: list[tuple[str, int, float, float]], steps: int
               ) -> list[tuple[Widths, float, float]]:
    """Cut the move sequence into at most ``steps`` steps of about equal saving: (widths,
    predicted drop, saving) per step, each step's widths within the previous one's."""
    if not moves:
        return []
    total = moves[-1][3]
    plans: list[tuple[Widths, float, float]] = []
    widths, i = dict(full), 0
    for k in range(1, steps + 1):
        goal = total * k / steps
        # take moves while the next one brings the saving closer to this step's goal (at least
        # one per step, all of them at the end): a big move is not merged into a small step's,
        # so a cheap early point (one layer slightly narrower) stays a step of its own
        first = True
        while i < len(moves):
            done = moves[i - 1][3] if i else 0.0
            if not (first or k == steps or abs(moves[i][3] - goal) < abs(done - goal)):
                break
            widths[moves[i][0]] = moves[i][1]
            i += 1
            first = False
            if k < steps and moves[i - 1][3] >= goal - 1e-12:
                break
        if i and (not plans or plans[-1][0] != widths):
            plans.append((dict(widths), moves[i - 1][2], moves[i - 1][3]))
    return plans


def make_plan(
    model: nn.Module, input_shape: tuple[int, ...], params: PruneParams,
    scan_rows: list[dict[str, Any]], base_acc: float,
    measure: Callable[[list[nn.Module]], list[float]] | None = None,
    log: Callable[[str], None] = print,
) -> tuple[Widths, list[tuple[Widths, float, float]], list[dict[str, Any]]]:
    """(full widths, per-step plans, latency table) for ``model`` from its sensitivity scan."""
    ignored = resolve_ignored(model, list(params.ignore_layers))
    layers = group_roots(model, input_shape, ignored)
    full = current_widths(model, layers)
    curves = scan_curves(scan_rows, layers, base_acc)
    max_ratio = max(params.sensitivity_ratios)
    options = {layer: width_options(full[layer], params.round_to, max_ratio) for layer in layers}
    table: list[dict[str, Any]] = []
    if params.target == "latency":
        table = latency_table(model, input_shape, options, params, measure, log)

        def saved(layer: str, width: int) -> float:
            return latency_saved(table, layer, full[layer], width)
    else:
        base_macs = count_macs(model, input_shape)

        def saved(layer: str, width: int) -> float:
            return macs_saved(curves[layer], full[layer], width, base_macs)

    def drop(layer: str, width: int) -> float:
        return predicted_drop(curves[layer], full[layer], width)

    moves = greedy_moves(full, options, drop, saved)
    return full, plan_steps(full, moves, params.iterative_steps), table


# --- the step loop -----------------------------------------------------------------------------


def step_loop(
    model: nn.Module,
    plans: list[tuple[Widths, float, float]],
    prune: Callable[[nn.Module, Widths, int], None],
    evaluate_val: Callable[[nn.Module], float],
    base_acc: float,
    max_drop_points: float,
    finetune: FineTune | None = None,
    epochs: int = 0,
    measure: Callable[[nn.Module], dict[str, Any]] | None = None,
    evaluate_before: Callable[[nn.Module], float] | None = None,
    log: Callable[[str], None] = print,
) -> tuple[nn.Module, int, str, list[dict[str, Any]], list[dict[str, Any]], float | None]:
    """Follow ``plans`` until a step's validation drop exceeds the budget; keep the last good one.

    Returns (model, chosen step (0 = unpruned), stop reason, step rows, fine-tune history,
    ``evaluate_before`` of the chosen step). ``model`` is changed in place; the returned model
    is a snapshot of the chosen step.
    """
    measure = measure or (lambda m: {})
    rows = [{"step": 0, **measure(model), "predicted_drop_points": 0.0, "predicted_saving": 0.0,
             "val_acc": round(base_acc, 6), "val_drop_points": 0.0, "within_budget": True}]
    best, chosen, best_before = copy.deepcopy(model), 0, None
    history: list[dict[str, Any]] = []
    if max_drop_points <= 0:
        return best, 0, ("budget.max_drop_points is 0: no pruning step can keep the student's "
                         "accuracy, so the unpruned student is kept"), rows, history, None
    if not plans:
        return best, 0, ("nothing to prune: every layer is at its narrowest allowed width "
                         "(round_to / sensitivity_ratios)"), rows, history, None
    per_step = split_epochs(epochs, len(plans)) if epochs else [0] * len(plans)
    reason = (f"all {len(plans)} steps within the budget (the widest cut the sensitivity scan "
              "covers)")
    for step, (widths, pred_drop, pred_saving) in enumerate(plans, start=1):
        prune(model, widths, step)
        before = evaluate_before(model) if evaluate_before else None
        if finetune is not None and per_step[step - 1] > 0:
            history += finetune(model, step, per_step[step - 1])
        model.cpu().eval()
        acc = evaluate_val(model)
        drop = 100 * (base_acc - acc)
        within = bool(within_budget(drop, max_drop_points))
        rows.append({"step": step, **measure(model), "predicted_drop_points": round(pred_drop, 4),
                     "predicted_saving": round(pred_saving, 4), "val_acc": round(acc, 6),
                     "val_drop_points": round(drop, 4), "within_budget": within})
        log(f"[prune] budget step {step}/{len(plans)}: val acc {acc:.2%} (drop {drop:.2f} pts, "
            f"budget {max_drop_points:g}) {'ok' if within else 'over budget'}")
        if not within:
            reason = (f"step {step} dropped {drop:.2f} points on validation > budget "
                      f"{max_drop_points:g}; kept step {chosen}")
            break
        best, chosen, best_before = copy.deepcopy(model), step, before
    return best, chosen, reason, rows, history, best_before


def run_budget_pruning(
    model: nn.Module,
    input_shape: tuple[int, ...],
    params: PruneParams,
    scan_rows: list[dict[str, Any]],
    evaluate_val: Callable[[nn.Module], float],
    base_acc: float,
    max_drop_points: float,
    finetune: FineTune | None = None,
    evaluate_before: Callable[[nn.Module], float] | None = None,
    train: Split | None = None,
    measure_latency: Callable[[list[nn.Module]], list[float]] | None = None,
    log: Callable[[str], None] = print,
) -> BudgetOutcome:
    """Budget mode end to end: plan from the scan, then the step loop. Model left on CPU.

    ``max_drop_points`` is ``budget.max_drop_points``, here measured on validation against the
    unpruned student's ``base_acc``."""
    start = time.perf_counter()
    model.cpu().eval()
    if max_drop_points > 0:
        full, plans, table = make_plan(model, input_shape, params, scan_rows, base_acc,
                                       measure_latency, log)
        layers = list(full)
    else:  # nothing can be afforded: skip the plan (and the latency table's cost)
        plans, table = [], []
        layers = group_roots(model, input_shape, resolve_ignored(model, list(params.ignore_layers)))

    def measure(m: nn.Module) -> dict[str, Any]:
        return {"channels": format_widths(current_widths(m, layers)),
                "macs": count_macs(m, input_shape), "params": count_params(m)}

    def prune(m: nn.Module, widths: Widths, step: int) -> None:
        prune_to_widths(m, input_shape, widths, params, params.seed + step, train)

    best, chosen, reason, rows, history, before = step_loop(
        model, plans, prune, evaluate_val, base_acc, max_drop_points, finetune,
        params.train.epochs, measure, evaluate_before, log)
    best.cpu().eval()  # the caller prints ``stop_reason`` (one line)
    return BudgetOutcome(
        model=best, widths=current_widths(best, layers), chosen_step=chosen, stop_reason=reason,
        steps=rows, history=history, latency_table=table, acc_before_finetune=before,
        seconds=time.perf_counter() - start)
