"""Each network family through the chain on a tiny random-init instance (32 px, 4 classes): built
by name, one training step, structured pruning (MACs must drop, the file must rebuild to the same
outputs) or a clear refusal, then ONNX export and the .pt / .onnx files opened and compared with
PyTorch on values, and static int8 (smaller file, logits that follow the fp32 ones)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from shrinkflow.compress.prune import build_pruner, make_importance, pruning_step
from shrinkflow.compress.prune_families import check_prunable, check_rebuilds
from shrinkflow.compress.quantize import quantize_onnx_static
from shrinkflow.core.errors import ShrinkflowError
from shrinkflow.model_files.export_onnx import export_onnx
from shrinkflow.model_files.open import open_model
from shrinkflow.model_files.pt import load_model, save_model
from shrinkflow.nets.zoo import build_model, count_macs, final_linear, make_spec
from shrinkflow.params.common import ModelSpec

SHAPE = (3, 32, 32)
FAMILIES = {  # arch: what the family brings to pruning
    "resnet18": "residual",
    "mobilenet_v2": "depthwise",
    "mobilenet_v3_small": "depthwise + squeeze-excitation + hardswish",
    "efficientnet_b0": "squeeze-excitation + stochastic depth",
    "regnet_x_400mf": "grouped convolutions",
}
REFUSED = ["shufflenet_v2_x0_5", "convnext_tiny", "squeezenet1_1"]


def _spec(arch: str, **fields) -> dict:
    return make_spec(ModelSpec(arch=arch, **fields), SHAPE[0], 4, [0.5] * 3, [0.25] * 3,
                     image_hw=list(SHAPE[1:]))


def _train_one_step(model: torch.nn.Module) -> None:
    gen = torch.Generator().manual_seed(0)
    x, y = torch.rand(8, *SHAPE, generator=gen), torch.randint(0, 4, (8,), generator=gen)
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    model.train()
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    moved = sum(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert moved > len(before) // 2  # most tensors learned something


@pytest.mark.slow
@pytest.mark.parametrize("arch", sorted(FAMILIES))
def test_family_builds_trains_prunes_exports(arch, tmp_path):
    spec = _spec(arch)
    assert spec["stem"] == "small"  # 32 px: below the 96 px threshold
    torch.manual_seed(0)
    model = build_model(spec)
    _train_one_step(model)
    model.eval()
    macs = count_macs(model, SHAPE)
    pruner = build_pruner(model, SHAPE, make_importance("l2"), 0.5, 1, [final_linear(model)],
                          round_to=8)
    pruning_step(pruner, 0)
    pruned_macs = count_macs(model, SHAPE)
    assert pruned_macs < 0.6 * macs, (macs, pruned_macs)
    check_prunable(spec, "student.pt")
    check_rebuilds(model, spec, SHAPE)

    x = torch.rand(4, *SHAPE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = model(x)
    save_model(tmp_path / "m.pt", model, spec, role="pruned", pruned=True)
    reopened, _ = load_model(tmp_path / "m.pt", role="pruned")  # weights_only, resized
    torch.testing.assert_close(reopened(x).detach(), want, atol=1e-5, rtol=0)
    export_onnx(model, SHAPE, tmp_path / "m.onnx")
    onnx_model = open_model(tmp_path / "m.onnx", SHAPE, 4)
    images = (x * 255).round().to(torch.uint8)
    fp32 = model(images / 255).detach()
    torch.testing.assert_close(onnx_model.predict(images), fp32, atol=1e-4, rtol=0)

    calibration = torch.randint(0, 256, (16, *SHAPE), dtype=torch.uint8,
                                generator=torch.Generator().manual_seed(2))
    quantize_onnx_static(tmp_path / "m.onnx", tmp_path / "int8.onnx", calibration)
    int8 = open_model(tmp_path / "int8.onnx", SHAPE, 4).predict(images)
    assert (tmp_path / "int8.onnx").stat().st_size < 0.45 * (tmp_path / "m.onnx").stat().st_size
    assert torch.corrcoef(torch.stack([int8.flatten(), fp32.flatten()]))[0, 1] > 0.8


@pytest.mark.parametrize("arch", REFUSED)
def test_unprunable_family_is_refused_in_one_line(arch):
    with pytest.raises(ShrinkflowError, match=rf"student.pt: structured pruning does not take "
                                              rf"{arch}: .*; set prune.mode: unstructured"):
        check_prunable({"arch": arch}, "student.pt")


def test_photo_size_keeps_the_standard_stem_and_small_images_adapt_it():
    small, photo = _spec("resnet50"), make_spec(
        ModelSpec(arch="resnet50"), 3, 4, [0.5] * 3, [0.25] * 3, image_hw=[224, 224])
    assert (small["stem"], photo["stem"]) == ("small", "standard")
    a, b = build_model(small).body, build_model(photo).body
    assert a.conv1.kernel_size == (3, 3) and a.conv1.stride == (1, 1)
    assert b.conv1.kernel_size == (7, 7) and b.conv1.stride == (2, 2)
    assert isinstance(b.maxpool, torch.nn.MaxPool2d) and isinstance(a.maxpool, torch.nn.Identity)
    grey = make_spec(ModelSpec(arch="resnet50"), 1, 4, [0.5], [0.25], image_hw=[224, 224])
    assert build_model(grey).body.conv1.in_channels == 1


def test_constructor_options_reach_torchvision():
    narrow = build_model(_spec("mobilenet_v3_small", options={"width_mult": 0.5}))
    wide = build_model(_spec("mobilenet_v3_small"))
    assert sum(p.numel() for p in narrow.parameters()) < sum(p.numel() for p in wide.parameters())


def test_unknown_arch_names_close_matches():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=r"unknown architecture 'mobilenet_v3_smal'; close "
                                              r"matches: mobilenet_v3_small"):
        ModelSpec(arch="mobilenet_v3_smal")


def test_width_mult_outside_mobilenet_v2_points_to_options():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="width_mult applies to mobilenet_v2 only"):
        ModelSpec(arch="resnet50", width_mult=0.5)


@pytest.mark.parametrize("method", ["hint", "attention"])
def test_feature_kd_between_families_whose_layer_names_differ(method):
    """resnet18 teacher (layer4) -> mobilenet_v3_small student (features): the default layers
    are found by themselves, and the feature loss is finite and trains the student's layer."""
    from shrinkflow.compress.distill import build_loss, default_feature_layer
    from shrinkflow.params.distill import DistillParams

    torch.manual_seed(0)
    teacher, student = build_model(_spec("resnet18")), build_model(_spec("mobilenet_v3_small"))
    assert (default_feature_layer(teacher), default_feature_layer(student)) == (
        "body.layer4", "body.features")
    loss_fn = build_loss(DistillParams(method=method), teacher, student, SHAPE)
    x, y = torch.rand(4, *SHAPE), torch.tensor([0, 1, 2, 3])
    loss, parts = loss_fn(student(x), y, x)
    assert torch.isfinite(loss) and parts[method].item() > 0
    loss.backward()
    assert student.body.features[-1][0].weight.grad.abs().sum() > 0
