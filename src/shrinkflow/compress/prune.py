"""Pruning: structured channel removal (real speed-ups) and unstructured sparsity (no speed-up).

Structured pruning uses torch-pruning's dependency graph (DepGraph): removing output channels of a
conv also removes the matching batch-norm entries and input channels of every layer that reads
them (residual additions and depthwise convs included), so the result is a smaller dense model
that runs faster anywhere. The classifier head is never pruned, so the class count is unchanged.

Unstructured pruning zeroes the globally smallest weights with ``torch.nn.utils.prune``. Shapes
stay the same and dense kernels do the same work: it buys *sparsity, not speed* (useful only with
sparse kernels or compression).

Fine-tuning between pruning steps is passed in as a callback so this module never knows about
datasets, teachers or files. The ``fit`` budget (``train.epochs``) is the TOTAL fine-tune budget:
it is split across ``iterative_steps`` (remainder to the last steps), so comparing 1 step with 4
steps compares equal training cost.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from shrinkflow.core.errors import ShrinkflowError
from shrinkflow.measure.metrics import accuracy
from shrinkflow.nets.zoo import count_macs, count_params, final_linear
from shrinkflow.params.common import TrainConfig
from shrinkflow.params.prune import PruneParams
from shrinkflow.training.loop import Split, fit, iterate_batches, predict

# Fine-tune callback: (model, step index from 1, epochs for this step) -> history rows.
FineTune = Callable[[nn.Module, int, int], list[dict[str, Any]]]

TAYLOR_BATCHES = 4  # training batches whose gradients feed Taylor importance before each step
PRUNABLE = (nn.Conv2d, nn.Linear)


@dataclass
class PruneOutcome:
    """What a pruning run did; the stage turns this into ``metrics/prune.json``."""

    model: nn.Module
    history: list[dict[str, Any]] = field(default_factory=list)
    acc_before_finetune: float | None = None  # set when an evaluator is given
    seconds: float = 0.0


# --- layer selection -------------------------------------------------------------------------


def prunable_names(model: nn.Module) -> list[str]:
    """Names of the conv / linear modules a user may list in ``prune.ignore_layers``."""
    return [name for name, m in model.named_modules() if isinstance(m, PRUNABLE)]


def resolve_ignored(model: nn.Module, names: list[str]) -> list[nn.Module]:
    """The classifier head plus the named modules; an unknown name is the user's error to fix.

    Checked before any work so a typo fails in a second with the list of valid names.
    """
    modules = dict(model.named_modules())
    valid = prunable_names(model)
    unknown = [n for n in names if n not in valid]
    if unknown:
        raise ShrinkflowError(
            f"params.yaml prune.ignore_layers: unknown layer(s) {unknown}; expected conv/linear "
            f"module names of this model: {', '.join(valid)}"
        )
    head = final_linear(model)
    return [head] + [modules[n] for n in names if modules[n] is not head]


# --- measurements ----------------------------------------------------------------------------


def sparsity(model: nn.Module, exclude: list[nn.Module] | None = None) -> float:
    """Fraction of exactly-zero weights over conv/linear layers (minus ``exclude``).

    The figure unstructured pruning produces; it says nothing about speed.
    """
    skip = {id(m) for m in exclude or []}
    zeros = total = 0
    for m in model.modules():
        if isinstance(m, PRUNABLE) and id(m) not in skip:
            zeros += int((m.weight == 0).sum())
            total += m.weight.numel()
    return zeros / max(total, 1)


def conv_channels(model: nn.Module) -> int:
    """Total conv output channels: before/after gives the achieved channel pruning ratio."""
    return sum(m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d))


def model_accuracy(model: nn.Module, split: Split, batch_size: int = 256) -> float:
    """Top-1 accuracy (fraction) of ``model`` on a (uint8 images, labels) split."""
    return accuracy(predict(model, split[0], batch_size), split[1])


def size_summary(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, int]:
    """Params, MACs per image and conv channels: the numbers compared before/after pruning."""
    model = model.cpu()
    return {
        "params": count_params(model),
        "macs": count_macs(model, input_shape),
        "channels": conv_channels(model),
    }


def size_change(before: dict[str, int], after: dict[str, int]) -> dict[str, Any]:
    """``metrics/prune.json``'s size figures from two ``size_summary``-like dicts (params, MACs,
    channels): before, after and their ratios."""
    return {
        "prune_params_before": before["params"],
        "prune_params_after": after["params"],
        "prune_params_ratio": round(after["params"] / before["params"], 6),
        "prune_macs_before": before["macs"],
        "prune_macs_after": after["macs"],
        "prune_macs_ratio": round(after["macs"] / before["macs"], 6),
        "prune_achieved_channel_ratio": round(1 - after["channels"] / before["channels"], 6),
    }


# --- structured pruning (torch-pruning) ------------------------------------------------------


def make_importance(name: str) -> Any:
    """Map ``prune.importance`` to a torch-pruning importance criterion."""
    import torch_pruning as tp

    if name == "l1":
        return tp.importance.GroupMagnitudeImportance(p=1)
    if name == "l2":
        return tp.importance.GroupMagnitudeImportance(p=2)
    if name == "taylor":
        return tp.importance.GroupTaylorImportance()
    if name == "random":
        return tp.importance.RandomImportance()
    raise ShrinkflowError(f"prune.importance = {name!r}: expected l1, l2, taylor or random")


def build_pruner(
    model: nn.Module,
    input_shape: tuple[int, ...],
    importance: Any,
    ratio: float,
    iterative_steps: int = 1,
    ignored: list[nn.Module] | None = None,
    ratio_dict: dict[nn.Module, float] | None = None,
    round_to: int = 1,
) -> Any:
    """A torch-pruning BasePruner (alias MetaPruner) tracing ``model`` on one CPU example.

    ``round_to`` keeps channel counts multiples of it: oneDNN's blocked conv kernels are much
    slower on odd widths (measured here: 0.77x vs 0.57x of the student's batch-64 latency).
    """
    import torch_pruning as tp

    model.cpu().eval()
    return tp.pruner.BasePruner(
        model,
        example_inputs=torch.rand(1, *input_shape),
        importance=importance,
        pruning_ratio=ratio,
        pruning_ratio_dict=ratio_dict,
        iterative_steps=iterative_steps,
        ignored_layers=ignored or [],
        round_to=round_to if round_to > 1 else None,
    )


def taylor_gradients(model: nn.Module, train: Split, batch_size: int, seed: int) -> None:
    """Fill ``.grad`` with the CE loss gradient over a few seeded batches (Taylor importance).

    Runs in eval mode so batch-norm running statistics are not disturbed by the probe.
    """
    model.cpu().eval()
    model.zero_grad(set_to_none=True)
    gen = torch.Generator().manual_seed(seed)
    batches = iterate_batches(train, batch_size, torch.device("cpu"), gen, TAYLOR_BATCHES)
    for xb, yb in batches:
        F.cross_entropy(model(xb), yb).backward()


def pruning_step(pruner: Any, seed: int) -> None:
    """One pruner step with torch's RNG forked and seeded, so ``random`` importance repeats."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        pruner.step()


def split_epochs(total: int, steps: int) -> list[int]:
    """Spread ``total`` fine-tune epochs over ``steps`` (remainder to the last steps)."""
    base, extra = divmod(total, steps)
    return [base + (1 if i >= steps - extra else 0) for i in range(steps)]


def prune_structured(
    model: nn.Module,
    input_shape: tuple[int, ...],
    params: PruneParams,
    finetune: FineTune | None = None,
    evaluate: Callable[[nn.Module], float] | None = None,
    train: Split | None = None,
    log: Callable[[str], None] = print,
    ignored: list[nn.Module] | None = None,
) -> PruneOutcome:
    """Remove ``params.ratio`` of the channels of every prunable group, in place.

    ``iterative_steps`` prunes linearly towards the ratio, fine-tuning after each step with that
    step's share of the epochs. ``evaluate`` (if given) measures accuracy once, right after the
    last pruning step and before its fine-tune. ``train`` is required for Taylor importance.
    ``ignored``: the layers whose output channels stay (default: the classifier head and
    ``params.ignore_layers``; a detector passes its heads, compress.prune_detection).
    """
    if params.importance == "taylor" and train is None:
        raise ValueError("taylor importance needs training data for its gradient probe")
    start = time.perf_counter()
    if ignored is None:
        ignored = resolve_ignored(model, list(params.ignore_layers))
    pruner = build_pruner(
        model, input_shape, make_importance(params.importance), params.ratio,
        params.iterative_steps, ignored, round_to=params.round_to,
    )
    outcome = PruneOutcome(model)
    epochs = split_epochs(params.train.epochs, params.iterative_steps)
    for step in range(1, params.iterative_steps + 1):
        if params.importance == "taylor":
            taylor_gradients(model, train, params.train.batch_size, params.seed + step)
        pruning_step(pruner, params.seed + step)
        model.zero_grad(set_to_none=True)
        log(f"[prune] step {step}/{params.iterative_steps}: {conv_channels(model)} conv "
            f"channels, {count_params(model):,} params")
        if step == params.iterative_steps and evaluate is not None:
            outcome.acc_before_finetune = evaluate(model)
        if finetune is not None and epochs[step - 1] > 0:
            outcome.history += finetune(model, step, epochs[step - 1])
        model.cpu()
    outcome.seconds = time.perf_counter() - start
    return outcome


# --- unstructured pruning (torch.nn.utils.prune) ---------------------------------------------


def prune_unstructured(
    model: nn.Module,
    params: PruneParams,
    finetune: FineTune | None = None,
    evaluate: Callable[[nn.Module], float] | None = None,
    log: Callable[[str], None] = print,
) -> PruneOutcome:
    """Zero the globally smallest |w| of conv/linear weights (not the head) to ``params.ratio``.

    Masks stay attached during fine-tuning (pruned weights stay zero), then ``prune.remove``
    bakes the zeros into plain weights so the saved file is an ordinary state_dict.
    """
    from torch.nn.utils import prune as tprune

    start = time.perf_counter()
    ignored = resolve_ignored(model, list(params.ignore_layers))
    skip = {id(m) for m in ignored}
    targets = [(m, "weight") for m in model.modules() if isinstance(m, PRUNABLE)
               and id(m) not in skip]
    outcome = PruneOutcome(model)
    epochs = split_epochs(params.train.epochs, params.iterative_steps)
    done = 0.0
    for step in range(1, params.iterative_steps + 1):
        goal = params.ratio * step / params.iterative_steps
        # A float amount applies to the weights still unpruned, hence the rescaling.
        amount = (goal - done) / (1 - done)
        tprune.global_unstructured(targets, pruning_method=tprune.L1Unstructured, amount=amount)
        done = goal
        log(f"[prune] step {step}/{params.iterative_steps}: sparsity "
            f"{sparsity(model, ignored):.1%} (sparsity, not speed)")
        if step == params.iterative_steps and evaluate is not None:
            outcome.acc_before_finetune = evaluate(model)
        if finetune is not None and epochs[step - 1] > 0:
            outcome.history += finetune(model, step, epochs[step - 1])
        model.cpu()
    for module, name in targets:
        tprune.remove(module, name)
    outcome.seconds = time.perf_counter() - start
    return outcome


# --- fine-tune and the whole run ---------------------------------------------------------------


def make_finetune(
    train: Any, val: Any, cfg: TrainConfig, loss_fn: Any = None,
    log: Callable[[str], None] = print, params_key: str = "train",
    loss_params: Mapping[str, Any] | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    trainer: Callable[..., list[dict[str, Any]]] = fit,
) -> FineTune:
    """A fine-tune callback around the one training loop; rows get a global epoch and step.

    ``params_key`` / ``loss_params`` name the params behind ``cfg`` and the loss in errors.
    ``trainer``: the loop (``training.loop.fit``; a detector's ``fit_detector`` with its classes
    bound, compress.prune_detection), called with ``fit``'s keyword names.
    """
    done: list[int] = [0]

    def finetune(model: nn.Module, step: int, epochs: int) -> list[dict[str, Any]]:
        step_cfg = cfg.model_copy(update={"epochs": epochs, "seed": cfg.seed + step - 1})
        rows = trainer(model, train, val, cfg=step_cfg, loss_fn=loss_fn, log=log,
                       name=f"prune{step}", params_key=params_key, loss_params=loss_params,
                       on_epoch=on_epoch)
        for row in rows:
            row["epoch"] = done[0] + row["epoch"]
            row["prune_step"] = step
        done[0] += epochs
        return rows

    return finetune


def run_pruning(
    model: nn.Module,
    input_shape: tuple[int, ...],
    params: PruneParams,
    finetune: FineTune | None = None,
    evaluate: Callable[[nn.Module], float] | None = None,
    train: Split | None = None,
    log: Callable[[str], None] = print,
) -> PruneOutcome:
    """Prune (structured or unstructured per ``params.mode``) and fine-tune; model left on CPU."""
    if params.mode == "structured":
        outcome = prune_structured(model, input_shape, params, finetune, evaluate, train, log)
    else:
        outcome = prune_unstructured(model, params, finetune, evaluate, log)
    outcome.model.cpu().eval()
    return outcome


# --- sensitivity scan ------------------------------------------------------------------------


def group_roots(
    model: nn.Module, input_shape: tuple[int, ...], ignored: list[nn.Module]
) -> list[str]:
    """Names of the root layer of every prunable channel group, input side first.

    A group is what must shrink together (e.g. all convs feeding one residual sum), so it is the
    honest unit of "prune this layer alone".
    """
    import torch_pruning as tp

    model.cpu().eval()
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=torch.rand(1, *input_shape))
    order = {m: i for i, m in enumerate(model.modules())}
    names = {m: n for n, m in model.named_modules()}
    ignore = [sub for m in ignored for sub in m.modules()]
    roots = []
    for group in graph.get_all_groups(ignored_layers=ignore, root_module_types=PRUNABLE):
        # Label a group by its first layer whose output channels it removes, in model order.
        members = [dep.target.module for dep, _ in group
                   if isinstance(dep.target.module, PRUNABLE)
                   and graph.is_out_channel_pruning_fn(dep.handler)]
        roots.append(min(members, key=order.__getitem__))
    return [names[m] for m in sorted(roots, key=order.__getitem__)]


def evenly_spaced(items: list[str], limit: int) -> list[str]:
    """At most ``limit`` items spread over the list (first and last kept): caps the scan's cost."""
    if limit <= 0 or len(items) <= limit:
        return items
    if limit == 1:
        return items[:1]
    picks = sorted({round(i * (len(items) - 1) / (limit - 1)) for i in range(limit)})
    return [items[i] for i in picks]


def sensitivity_scan(
    model: nn.Module,
    input_shape: tuple[int, ...],
    split: Split,
    ratios: list[float],
    importance: str = "l2",
    ignore_layers: list[str] | None = None,
    max_layers: int = 0,
    seed: int = 0,
    train: Split | None = None,
    log: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Accuracy on ``split`` when ONE group is pruned at each ratio, with no fine-tune.

    Shows which layers tolerate pruning (flat curves) and which do not. Every trial prunes a deep
    copy; the input model is untouched. Rows: ``{layer, ratio, accuracy, macs}``.
    """
    ignored = resolve_ignored(model, list(ignore_layers or []))
    roots = evenly_spaced(group_roots(model, input_shape, ignored), max_layers)
    ignored_names = {n for n, m in model.named_modules() if any(m is i for i in ignored)}
    rows: list[dict[str, Any]] = []
    for layer in roots:
        for ratio in ratios:
            trial = copy.deepcopy(model).cpu().eval()
            modules = dict(trial.named_modules())
            if importance == "taylor":
                taylor_gradients(trial, train, 64, seed)
            pruner = build_pruner(
                trial, input_shape, make_importance(importance), 0.0,
                ignored=[modules[n] for n in ignored_names], ratio_dict={modules[layer]: ratio},
            )
            pruning_step(pruner, seed)
            rows.append({
                "layer": layer,
                "ratio": float(ratio),
                "accuracy": round(model_accuracy(trial, split), 6),
                "macs": count_macs(trial, input_shape),
            })
        log(f"[sensitivity] {layer}: " + "  ".join(
            f"{r['ratio']:.2f}->{r['accuracy']:.1%}" for r in rows[-len(ratios):]))
    return rows
