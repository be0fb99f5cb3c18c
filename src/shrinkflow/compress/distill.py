"""Knowledge distillation losses, in the training loop's loss signature.

``fit`` calls ``loss(logits, targets, inputs)`` right after the student's forward pass. The
losses here run the frozen teacher on the same ``inputs`` and compare:

* ``KDLoss``: Hinton et al. 2015, soft targets at temperature ``T`` blended with hard-label CE.
* ``FeatureKDLoss``: ``KDLoss`` plus a feature loss at one teacher/student layer pair, captured
  with forward hooks: ``hint`` (FitNets, Romero et al. 2015: MSE after a learned 1x1-conv
  adapter) or ``attention`` (attention transfer, Zagoruyko & Komodakis 2017).

Teacher logits for ``kd`` are memoised per input image (keyed by a digest of its bytes, see
``KDLoss.teacher_logits``): exact, because the teacher is frozen, and still correct the day
augmentation is added (new images miss the cache). A cache "per epoch, by index" would be
simpler but would silently go stale with augmentation, and ``fit`` passes no indices anyway.
The teacher forward costs ~1.5x the student's training step on CPU here, so this halves the
stage. Feature losses need the teacher's feature maps every batch, so they run it on the fly.

The teacher is deliberately *not* a registered submodule: ``fit`` optimises
``loss_fn.parameters()`` (the hint adapter must train), and the teacher must never be among them.
"""

from __future__ import annotations

import hashlib
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from shrinkflow.core.errors import ShrinkflowError
from shrinkflow.measure.metrics import accuracy, logit_parity
from shrinkflow.nets.zoo import count_macs, count_params
from shrinkflow.params.distill import DistillParams
from shrinkflow.training.loop import LossParts, Split, predict

FeatureMethod = Literal["hint", "attention"]
CACHE_LIMIT = 200_000  # images; ~0.8 KB per entry (key + tensor), so ~160 MB when full


# --- logit distillation ------------------------------------------------------------------------


class KDLoss(nn.Module):
    """``alpha * KL(p_teacher^T || p_student^T) * T^2 + (1 - alpha) * CE(student, labels)``.

    The ``T^2`` factor keeps the soft-target gradients on the same scale as CE's when ``T``
    changes (Hinton et al. 2015, section 2). ``alpha == 0`` is exactly plain CE and skips the
    teacher, so the same code path serves as the no-distillation control (e.g. prune fine-tune).

    The teacher is frozen here (eval mode, ``requires_grad_(False)``) and is moved to the inputs'
    device on first use, because ``fit``'s ``loss_fn.to(device)`` does not see it.
    """

    def __init__(
        self,
        teacher: nn.Module,
        T: float,
        alpha: float,
        label_smoothing: float = 0.0,
        cache_teacher: bool = False,
    ) -> None:
        super().__init__()
        if T <= 0:
            raise ValueError(f"KD temperature T must be > 0, got {T}")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"KD alpha must be in [0, 1], got {alpha}")
        teacher.eval().requires_grad_(False)
        self._teacher = (teacher,)  # a tuple hides it from .parameters() / .to() / .train()
        self.T = float(T)
        self.alpha = float(alpha)
        self.label_smoothing = float(label_smoothing)
        self.cache_teacher = cache_teacher
        self._cache: dict[bytes, torch.Tensor] = {}

    @property
    def teacher(self) -> nn.Module:
        return self._teacher[0]

    def teacher_logits(self, inputs: torch.Tensor) -> torch.Tensor:
        """Teacher logits for the batch, from the per-image cache when ``cache_teacher`` is on.

        The cache is keyed by a digest of each input image's bytes, so it is exact whatever the
        batch order: a frozen eval-mode teacher gives one answer per image. Without augmentation
        the teacher then runs once per image instead of once per epoch (distillation on CPU
        costs ~scratch training instead of ~2.5x). Augmented images simply miss; the cache stops
        growing at ``CACHE_LIMIT`` entries.
        """
        if not self.cache_teacher:
            return self.run_teacher(inputs)
        keys = [
            hashlib.blake2b(row.tobytes(), digest_size=16).digest()
            for row in inputs.detach().float().cpu().numpy()
        ]
        missing = [i for i, key in enumerate(keys) if key not in self._cache]
        fresh: dict[int, torch.Tensor] = {}
        if missing:
            fresh = dict(zip(missing, self.run_teacher(inputs[missing]).cpu(), strict=True))
            if len(self._cache) + len(fresh) <= CACHE_LIMIT:
                self._cache.update({keys[i]: row for i, row in fresh.items()})
        rows = [fresh[i] if i in fresh else self._cache[key] for i, key in enumerate(keys)]
        return torch.stack(rows).to(inputs.device)

    def run_teacher(self, inputs: torch.Tensor) -> torch.Tensor:
        """Frozen teacher forward on a batch (float32 logits, no graph); fires its hooks."""
        teacher = self.teacher
        first = next(teacher.parameters(), None)
        if first is not None and first.device != inputs.device:
            teacher.to(inputs.device)
        teacher.eval()  # cheap, and guards against a caller having put it back in train mode
        with torch.no_grad():
            return teacher(inputs).float()

    def combine(
        self, logits: torch.Tensor, targets: torch.Tensor, teacher_logits: torch.Tensor | None
    ) -> tuple[torch.Tensor, LossParts]:
        """The blended loss given teacher logits (``None`` is allowed only when alpha is 0)."""
        ce = F.cross_entropy(logits, targets, label_smoothing=self.label_smoothing)
        if self.alpha == 0.0:
            return ce, {"ce": ce.detach()}
        if teacher_logits is None:
            raise ValueError("KDLoss.combine needs teacher logits when alpha > 0")
        kd = soft_target_loss(logits, teacher_logits, self.T)
        loss = self.alpha * kd + (1.0 - self.alpha) * ce
        return loss, {"kd": kd.detach(), "ce": ce.detach()}

    def forward(
        self, logits: torch.Tensor, targets: torch.Tensor, inputs: torch.Tensor
    ) -> tuple[torch.Tensor, LossParts]:
        teacher_logits = None if self.alpha == 0.0 else self.teacher_logits(inputs)
        return self.combine(logits, targets, teacher_logits)


def soft_target_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, T: float
) -> torch.Tensor:
    """``KL(softmax(t/T) || softmax(s/T)) * T^2``, averaged over the batch."""
    log_p_student = F.log_softmax(student_logits.float() / T, dim=1)
    log_p_teacher = F.log_softmax(teacher_logits.float() / T, dim=1)
    kl = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
    return kl * (T * T)


# --- feature distillation ----------------------------------------------------------------------


def default_feature_layer(model: nn.Module) -> str:
    """The last block of convolutions before global pooling, by module name: the last top-level
    child of the network body (in registration order) that holds a convolution.

    That is ``body.features`` for the cnn, mobilenets, efficientnets, convnext, vgg and densenet,
    ``body.layer4`` for resnets, ``body.trunk_output`` for regnets, ``body.conv5`` for
    shufflenets; teacher and student names may differ (the feature loss projects channels and
    pools sizes). A model whose order differs names its layers in distill.*_layer.
    """
    body = getattr(model, "body", model)
    prefix = "body." if body is not model else ""
    with_conv = [name for name, child in body.named_children()
                 if any(isinstance(m, nn.Conv2d) for m in child.modules())]
    if with_conv:
        return prefix + with_conv[-1]
    raise ShrinkflowError(
        "cannot pick a default feature layer for this model; set distill.teacher_layer / "
        f"distill.student_layer to a module name, e.g. one of: {_some_layer_names(model)}"
    )


def _some_layer_names(model: nn.Module, limit: int = 20) -> str:
    names = [n for n, _ in model.named_modules() if n and n.count(".") <= 2]
    more = f", ... ({len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def find_layer(model: nn.Module, name: str, key: str) -> nn.Module:
    """The submodule called ``name``; a clear error naming the params ``key`` otherwise."""
    modules = dict(model.named_modules())
    if not name or name not in modules:
        raise ShrinkflowError(
            f"{key} = {name!r}: no such module; valid names include: {_some_layer_names(model)}"
        )
    return modules[name]


def attention_map(features: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
    """Zagoruyko & Komodakis: channel-mean of squared activations, pooled to ``size``, L2-normed.

    Channel counts of teacher and student may differ; only spatial sizes must match.
    """
    amap = features.float().pow(2).mean(dim=1, keepdim=True)
    if size is not None and tuple(amap.shape[-2:]) != tuple(size):
        amap = F.adaptive_avg_pool2d(amap, size)
    return F.normalize(amap.flatten(1), dim=1)


def _common_size(a: torch.Tensor, b: torch.Tensor) -> tuple[int, int]:
    return min(a.shape[-2], b.shape[-2]), min(a.shape[-1], b.shape[-1])


def _pool_to(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Adaptive average pooling, skipped when ``x`` already has that spatial size."""
    return x if tuple(x.shape[-2:]) == tuple(size) else F.adaptive_avg_pool2d(x, size)


class FeatureKDLoss(nn.Module):
    """``KDLoss`` + ``weight`` x a feature loss between one student and one teacher layer.

    Forward hooks store each layer's output while the models run: the student's during ``fit``'s
    forward (with its graph, so the feature loss trains the student), the teacher's during the
    teacher forward inside this loss. For ``hint`` a 1x1-conv adapter maps student channels to
    teacher channels; its size comes from one dummy forward at construction, and it is a
    registered submodule so ``fit`` trains it. Call ``remove_hooks()`` after training.
    """

    def __init__(
        self,
        kd: KDLoss,
        student: nn.Module,
        student_layer: str,
        teacher_layer: str,
        method: FeatureMethod,
        weight: float,
        input_shape: tuple[int, ...],
    ) -> None:
        super().__init__()
        if method not in ("hint", "attention"):
            raise ValueError(f"feature method must be 'hint' or 'attention', got {method!r}")
        self.kd = kd
        self.method = method
        self.weight = float(weight)
        self._captured: dict[str, torch.Tensor] = {}
        s_module = find_layer(student, student_layer, "distill.student_layer")
        t_module = find_layer(kd.teacher, teacher_layer, "distill.teacher_layer")
        self._hooks = [
            s_module.register_forward_hook(self._capture("student")),
            t_module.register_forward_hook(self._capture("teacher")),
        ]
        s_shape = _probe_shape(student, input_shape, self._captured, "student", student_layer)
        t_shape = _probe_shape(kd.teacher, input_shape, self._captured, "teacher", teacher_layer)
        self.student_shape, self.teacher_shape = s_shape, t_shape
        self.adapter = nn.Conv2d(s_shape[1], t_shape[1], 1) if method == "hint" else None

    def _capture(self, role: str):
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            # clone: a later in-place op (ReLU(inplace=True)) must not change what we stored
            if isinstance(output, torch.Tensor):
                self._captured[role] = output.clone()

        return hook

    def remove_hooks(self) -> None:
        for handle in self._hooks:
            handle.remove()
        self._hooks = []
        self._captured.clear()

    def feature_loss(self, student_feat: torch.Tensor, teacher_feat: torch.Tensor) -> torch.Tensor:
        """Hint: MSE(adapter(student), teacher). Attention: mean squared L2 between maps."""
        teacher_feat = teacher_feat.detach().float()
        size = _common_size(student_feat, teacher_feat)
        if self.method == "hint":
            assert self.adapter is not None
            projected = _pool_to(self.adapter(student_feat.float()), size)
            return F.mse_loss(projected.float(), _pool_to(teacher_feat, size))
        s_map, t_map = attention_map(student_feat, size), attention_map(teacher_feat, size)
        return (s_map - t_map).pow(2).sum(dim=1).mean()

    def forward(
        self, logits: torch.Tensor, targets: torch.Tensor, inputs: torch.Tensor
    ) -> tuple[torch.Tensor, LossParts]:
        student_feat = self._captured.pop("student", None)
        if student_feat is None or student_feat.shape[0] != logits.shape[0]:
            raise RuntimeError(
                "FeatureKDLoss found no student features for this batch: call it right after "
                "the student's forward pass on the same inputs"
            )
        teacher_logits = self.kd.run_teacher(inputs)  # never cached: its hook must fire
        teacher_feat = self._captured.pop("teacher")
        loss, parts = self.kd.combine(logits, targets, teacher_logits)
        feat = self.feature_loss(student_feat, teacher_feat)
        return loss + self.weight * feat, {**parts, self.method: feat.detach()}


def _probe_shape(
    model: nn.Module,
    input_shape: tuple[int, ...],
    captured: dict[str, torch.Tensor],
    role: str,
    layer: str,
) -> tuple[int, ...]:
    """Run one zero batch in eval mode (BN stats untouched) and return the hooked output shape."""
    first = next(model.parameters(), None)
    device = first.device if first is not None else torch.device("cpu")
    was_training = model.training
    model.eval()
    with torch.no_grad():
        model(torch.zeros(2, *input_shape, device=device))
    model.train(was_training)
    out = captured.pop(role, None)
    if out is None or out.dim() != 4:
        got = "no tensor" if out is None else f"shape {tuple(out.shape)}"
        raise ShrinkflowError(
            f"distill.{role}_layer = {layer!r} gives {got}; expected a feature map (N, C, H, W)"
        )
    return tuple(out.shape)


def build_loss(
    params: DistillParams, teacher: nn.Module, student: nn.Module, input_shape: tuple[int, ...]
) -> nn.Module:
    """The distillation loss ``params.method`` asks for (``kd``, ``hint`` or ``attention``).

    Build it after the student so any adapter's random init does not shift the student's.
    """
    # Augmented images are new every epoch: caching their teacher logits would only fill memory.
    cache = params.method == "kd" and params.train.augment == "none"
    kd = KDLoss(teacher, params.T, params.alpha, params.train.label_smoothing,
                cache_teacher=cache)
    if params.method == "kd":
        return kd
    return FeatureKDLoss(
        kd,
        student,
        params.student_layer or default_feature_layer(student),
        params.teacher_layer or default_feature_layer(teacher),
        params.method,
        params.feature_weight,
        input_shape,
    )


# --- checks and metrics ------------------------------------------------------------------------


def distill_metrics(
    teacher: nn.Module,
    student: nn.Module,
    test: Split,
    input_shape: tuple[int, ...],
    scratch_test_acc: float,
    train_seconds: float,
) -> dict[str, float | int]:
    """The flat metrics of ``metrics/distill.json``: size, cost, accuracy and the KD gain.

    Figures that other metrics files also hold (teacher.json, student_scratch.json, eval_*.json)
    carry a ``distill_`` prefix here, so every key stays unique across files.
    """
    t_logits, s_logits = predict(teacher, test[0]), predict(student, test[0])
    t_params, s_params = count_params(teacher), count_params(student)
    t_macs, s_macs = count_macs(teacher, input_shape), count_macs(student, input_shape)
    student_acc = round(accuracy(s_logits, test[1]), 6)
    gain = round(100 * (student_acc - round(float(scratch_test_acc), 6)), 3) + 0.0  # no -0.0
    return {
        "distill_student_params": s_params,
        "distill_student_macs": s_macs,
        "distill_teacher_params": t_params,
        "distill_teacher_macs": t_macs,
        "distill_params_ratio": round(t_params / max(s_params, 1), 3),
        "distill_macs_ratio": round(t_macs / max(s_macs, 1), 3),
        "student_test_acc": student_acc,
        "distill_teacher_test_acc": round(accuracy(t_logits, test[1]), 6),
        "distill_scratch_test_acc": round(float(scratch_test_acc), 6),
        "kd_gain_points": gain,
        "teacher_student_agreement": round(logit_parity(t_logits, s_logits)["agreement"], 6),
        "distill_train_seconds": round(float(train_seconds), 2),
    }
