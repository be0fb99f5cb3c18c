"""Structured pruning of a detector (``prepare.task: detection``; FCOS or RetinaNet, the same
way), heads kept whole.

torch-pruning traces a model on one tensor; the detector's own forward takes a list of images
and ends in box decoding and NMS, which it cannot trace. ``DenseDetector`` is the traceable
part, the backbone and the head, sharing their modules with the detector, so pruning it prunes the
detector in place. The head's convolutions are ignored: their output channels stay, so the
class logits, box offsets and centre-ness keep their shapes and the GroupNorm groups stay valid;
what shrinks is every backbone stage and, through torch-pruning's dependency graph, the input
channels of the head convolutions that read the backbone's last stage. (There is no neck: one
feature map, ``nets.detectors``.)

The steps, the fine-tune budget split and the seeds are classification's
(``compress.prune.prune_structured``); the fine-tune is the detection loop with the teacher's
dense-output distillation (``compress.detection_distill.DetectionKD``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torchvision.models.detection import FCOS

from shrinkflow.compress.prune import PruneOutcome, make_finetune, prune_structured
from shrinkflow.core.errors import ShrinkflowError
from shrinkflow.data.prepared_boxes import BoxSplit
from shrinkflow.nets.detectors import build_detector
from shrinkflow.nets.zoo import count_macs, count_params, resize_to_state_dict
from shrinkflow.params.prune import PruneParams
from shrinkflow.training.detection_loop import check_detection_recipe, fit_detector, split_map


class DenseDetector(nn.Module):
    """A detector's backbone and head as one tensor -> tensors module (no resizing
    transform, no decoding, no NMS): what torch-pruning traces and MACs are counted on."""

    def __init__(self, detector: FCOS) -> None:
        super().__init__()
        self.backbone, self.head = detector.backbone, detector.head

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.head(list(self.backbone(x).values()))


def check_detection_prune(p: PruneParams) -> None:
    """What detection pruning does not do, refused in one line before any work."""
    if p.mode != "structured":
        raise ShrinkflowError(f"prune.mode = {p.mode!r}: on detection data pruning removes "
                              "backbone channels; expected structured")
    if p.ratio == "auto":
        raise ShrinkflowError("prune.ratio = 'auto': budget mode plans from an accuracy scan of "
                              "classifiers; on detection data expected a fraction in (0, 1)")
    if p.importance == "taylor":
        raise ShrinkflowError("prune.importance = 'taylor': its gradient probe is a "
                              "classification loss; on detection data expected l1, l2 or random")
    if p.ignore_layers:
        raise ShrinkflowError(f"prune.ignore_layers = {list(p.ignore_layers)}: on detection data "
                              "the heads are kept and the backbone is pruned whole; expected []")
    check_detection_recipe(p.train, "prune.train")


def head_convs(detector: FCOS) -> list[nn.Module]:
    """The head's convolutions, whose output channels pruning keeps."""
    return [m for m in detector.head.modules() if isinstance(m, nn.Conv2d)]


def detector_size(detector: FCOS, input_shape: tuple[int, ...]) -> dict[str, int]:
    """Params, MACs per image (backbone and head; decoding and NMS are not multiply-adds) and
    backbone channels: the figures compared before and after pruning."""
    return {"params": count_params(detector),
            "macs": count_macs(DenseDetector(detector), input_shape),
            "channels": sum(m.out_channels for m in detector.backbone.modules()
                            if isinstance(m, nn.Conv2d))}


def prune_detector(detector: FCOS, input_shape: tuple[int, ...], p: PruneParams,
                   train: BoxSplit, val: BoxSplit, test: BoxSplit, classes: list[str],
                   loss_fn: Any, on_epoch: Callable[[dict[str, Any]], None] | None = None
                   ) -> PruneOutcome:
    """Prune ``detector`` in place to ``p.ratio`` of its backbone channels in
    ``p.iterative_steps`` steps, fine-tuning each with ``loss_fn`` (its share of
    ``p.train.epochs``); the test mAP right after the last step is the outcome's
    ``acc_before_finetune``."""
    finetune = make_finetune(
        train, val, p.train, loss_fn=loss_fn, params_key="prune.train",
        loss_params={"prune.kd.T": p.kd.T, "prune.kd.alpha": p.kd.alpha}, on_epoch=on_epoch,
        trainer=functools.partial(fit_detector, classes=classes))
    outcome = prune_structured(
        DenseDetector(detector), input_shape, p,
        finetune=lambda _dense, step, epochs: finetune(detector, step, epochs),
        evaluate=lambda _dense: split_map(detector, test, classes)["map"],
        ignored=head_convs(detector))
    outcome.model = detector.cpu().eval()
    return outcome


def check_detector_rebuilds(detector: FCOS, spec: dict[str, Any],
                            input_shape: tuple[int, ...]) -> None:
    """The pruned detector must come back from its tensors alone, as every later stage builds
    it (``model_files.pt.load_model``): rebuilt from the spec, resized, loaded, same outputs."""
    state = {k: v.detach().cpu() for k, v in detector.state_dict().items()}
    rebuilt = resize_to_state_dict(build_detector(spec), state)
    rebuilt.load_state_dict(state)
    x = torch.rand(2, *input_shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours, theirs = DenseDetector(detector.eval())(x), DenseDetector(rebuilt.eval())(x)
    if not all(torch.allclose(ours[k], theirs[k], atol=1e-4, rtol=1e-4) for k in ours):
        raise ShrinkflowError("prune: the pruned detector rebuilt from its tensors gives other "
                              "outputs; nothing was written")
