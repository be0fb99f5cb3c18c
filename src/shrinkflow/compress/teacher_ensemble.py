"""Teacher ensembles: several teachers that every distilling stage sees as one teacher.

Distillation was first shown as a way to fold an ensemble into one small model (Hinton et al.
2015): the student's soft targets are the mean of the members' softened probabilities,
``p = mean_i softmax(z_i / T)``. ``EnsembleTeacher`` returns the logits ``z' = T * log p``, so
``softmax(z' / T) == p`` exactly and everything written for "a teacher" (``KDLoss`` and its
logit cache, ``distill_metrics``, the prune and QAT fine-tunes) takes the ensemble unchanged.
``load_teacher`` returns a lone member itself, not a one-member wrapper: a single teacher gives
the same bytes downstream as before ensembles existed.

Member 0 is the pipeline's ``train_teacher`` model; each extra member is the same model and
recipe trained with another seed (``teacher.ensemble_seeds``), one file per seed in a folder the
stage scripts name (``member_file``).

Feature methods (hint / attention) hook one layer of one network; an ensemble has no single
feature map to imitate, so ``check_feature_method`` refuses them with more than one member
rather than silently picking a member.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from shrinkflow.core.errors import ShrinkflowError
from shrinkflow.measure.metrics import accuracy
from shrinkflow.model_files.pt import load_model
from shrinkflow.training.loop import predict

MEMBER_STAGE = "train_teacher_member"  # dvc.yaml's foreach stage: one item per extra seed
ROLE = "teacher"  # members are saved as teachers: a student file copied in is refused


class EnsembleTeacher(nn.Module):
    """Frozen members behind one forward: ``T * log(mean_i softmax(member_i(x) / T))``.

    ``softmax(output / T)`` is the members' mean softened probability; ``argmax`` of the output
    is the ensemble's prediction (at T = 1, plain probability averaging).
    """

    def __init__(self, members: Sequence[nn.Module], T: float) -> None:
        super().__init__()
        if len(members) < 2:
            raise ValueError(f"an ensemble needs at least 2 members, got {len(members)}")
        if not T > 0:
            raise ValueError(f"ensemble temperature T must be > 0, got {T}")
        self.members = nn.ModuleList(members)
        self.T = float(T)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        log_p = torch.stack([F.log_softmax(m(x).float() / self.T, dim=1) for m in self.members])
        # log of the mean probability, computed in log space (no underflow at high confidence)
        return self.T * (torch.logsumexp(log_p, dim=0) - math.log(len(self.members)))


def member_file(folder: str | Path, seed: int) -> Path:
    """The file of the extra member trained with ``seed``, inside the members' ``folder``."""
    return Path(folder) / f"teacher_{int(seed)}.pt"


def teacher_files(first: str | Path, folder: str | Path, seeds: Sequence[int]) -> dict[str, str]:
    """Every member's file -> the stage that writes it (for ``require_inputs``); member 0 first."""
    files = {str(first): "train_teacher"}
    files.update({str(member_file(folder, s)): f"{MEMBER_STAGE}@{s}" for s in seeds})
    return files


def load_teacher(
    paths: Sequence[str | Path], T: float
) -> tuple[nn.Module, list[dict[str, Any]]]:
    """The teacher for distillation: one file's model itself, or the ensemble of several.

    Returns (model in eval mode, the payloads in ``paths`` order). Every file must hold a model
    saved as the teacher (``meta.role``) and all members must agree on input channels and
    classes, so a mixed-up folder fails here, naming the file, before any training.
    """
    if not paths:
        raise ValueError("load_teacher needs at least one model file")
    loaded = [load_model(path, role=ROLE) for path in paths]
    first = loaded[0][1]["spec"]
    for path, (_, payload) in zip(paths, loaded, strict=True):
        for key in ("in_channels", "num_classes"):
            if payload["spec"].get(key) != first.get(key):
                raise ShrinkflowError(
                    f"{path}: teacher member has {key} = {payload['spec'].get(key)!r} but "
                    f"{paths[0]} has {first.get(key)!r}; retrain the members on the same data")
    models = [model for model, _ in loaded]
    payloads = [payload for _, payload in loaded]
    if len(models) == 1:
        return models[0], payloads
    return EnsembleTeacher(models, T).eval(), payloads


def check_feature_method(method: str, members: int, key: str = "distill.method") -> None:
    """Refuse hint / attention with several members: there is no one feature map to imitate."""
    if method != "kd" and members > 1:
        raise ShrinkflowError(
            f"{key} = {method!r} needs a single teacher, but teacher.ensemble_seeds adds "
            f"{members - 1} member(s): use method 'kd' with an ensemble, or set "
            "teacher.ensemble_seeds: []")


def check_teacher_fits_data(teacher_spec: dict[str, Any], meta: dict[str, Any], path: str) -> None:
    """Fail before training if the teacher was trained on a different input shape / class set."""
    expected = {"in_channels": meta["shape"][0], "num_classes": meta["num_classes"]}
    for key, want in expected.items():
        if teacher_spec.get(key) != want:
            raise ShrinkflowError(
                f"{path}: teacher has {key} = {teacher_spec.get(key)!r} but the prepared data "
                f"needs {want}; retrain the teacher on this data (dvc repro train_teacher)"
            )


def ensemble_metrics(
    members: Sequence[nn.Module], test: tuple[torch.Tensor, torch.Tensor],
    val: tuple[torch.Tensor, torch.Tensor], seeds: Sequence[int] = (),
) -> dict[str, float | int | str]:
    """Flat metrics of metrics/teacher_ensemble.json: the ensemble's val / test accuracy at T = 1
    (plain probability averaging) and its gain over the mean member; ``{}`` for one member.

    Each member's own accuracy is in its training stage's metrics file (teacher.json,
    teacher_<seed>.json); ``seeds`` (the extra members', recorded as "1,2") tells the report
    which of those files are current, since a removed member's file stays behind. Keys start
    with ``teacher_ensemble_`` to stay unique.
    """
    if len(members) < 2:
        return {}
    ensemble = EnsembleTeacher(members, T=1.0).eval()
    member_test = [accuracy(predict(m, test[0]), test[1]) for m in members]
    test_acc = accuracy(predict(ensemble, test[0]), test[1])
    return {
        "teacher_ensemble_members": len(members),
        "teacher_ensemble_seeds": ",".join(str(int(s)) for s in seeds),
        "teacher_ensemble_val_acc": round(accuracy(predict(ensemble, val[0]), val[1]), 6),
        "teacher_ensemble_test_acc": round(test_acc, 6),
        "teacher_ensemble_mean_member_test_acc": round(sum(member_test) / len(members), 6),
        "teacher_ensemble_gain_points": round(100 * (test_acc - sum(member_test) / len(members)),
                                              3) + 0.0,
    }
