"""The model zoo (shrinkflow.nets.zoo): every architecture on every input shape, normalisation
and the input downsampling (``distill.input_size``) inside the model, exact MAC counts."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tiny_models import FULL, downsampled_spec

from shrinkflow.nets.zoo import (
    Resize,
    build_model,
    count_macs,
    count_params,
    final_linear,
    make_spec,
)
from shrinkflow.params.common import ModelSpec

ARCHS = [ModelSpec(arch="cnn", widths=[8, 16]), ModelSpec(arch="resnet18"),
         ModelSpec(arch="mobilenet_v2", width_mult=0.25)]


def spec_for(model_params, channels, classes=7):
    return make_spec(model_params, channels, classes, [0.5] * channels, [0.25] * channels)


@pytest.mark.parametrize("model_params", ARCHS, ids=lambda m: m.arch)
@pytest.mark.parametrize("channels", [1, 3])
def test_zoo_shapes(model_params, channels):
    model = build_model(spec_for(model_params, channels)).eval()  # built once for three sizes
    for size in (8, 28, 32):
        with torch.no_grad():
            out = model(torch.rand(2, channels, size, size))
        assert out.shape == (2, 7), size
    assert final_linear(model).out_features == 7


def test_normalisation_is_inside_the_model():
    spec = spec_for(ModelSpec(widths=[4]), 1)
    model = build_model(spec).eval()
    x = torch.rand(1, 1, 8, 8)
    expected = model.body((x - 0.5) / 0.25)
    assert torch.allclose(model(x), expected)


def test_count_params_and_macs_grow_with_width():
    small = build_model(spec_for(ModelSpec(widths=[4, 8]), 1))
    big = build_model(spec_for(ModelSpec(widths=[8, 16]), 1))
    assert count_params(big) > count_params(small) > 0
    assert count_macs(big, (1, 8, 8)) > count_macs(small, (1, 8, 8)) > 0


def test_macs_of_one_convolution_counted_by_hand():
    """3x3 conv, 3 -> 5 channels, stride 2, padding 1, on 9x9: a 5x5 output map, and each of its
    5 * 5 * 5 values takes 3 * 3 * 3 multiply-adds; a bias adds one per output value."""
    conv = torch.nn.Conv2d(3, 5, kernel_size=3, stride=2, padding=1, bias=False)
    outputs = 5 * 5 * 5
    assert count_macs(conv, (3, 9, 9)) == outputs * 3 * 3 * 3 == 3375
    with_bias = torch.nn.Conv2d(3, 5, kernel_size=3, stride=2, padding=1)
    assert count_macs(with_bias, (3, 9, 9)) == outputs * (3 * 3 * 3 + 1)


@pytest.mark.parametrize("size", [8, 11, 5])
def test_resize_equals_antialiased_bilinear_interpolate(size):
    x = torch.rand(3, 2, 16, 12)
    expected = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True,
                             align_corners=False)
    got = Resize([16, 12], size)(x)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    # antialiasing differs from a plain bilinear resize when shrinking (the check can fail)
    plain = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    assert (got - plain).abs().max() > 1e-3


def test_spec_without_input_size_builds_no_resize():
    spec = downsampled_spec
    assert "input_size" not in spec(0) and "input_size" not in spec(16)  # 16 = the data's size
    assert isinstance(build_model(spec(0)).resize, torch.nn.Identity)
    assert spec(8)["input_size"] == 8 and spec(8)["image_hw"] == [16, 16]


def test_downsampled_student_is_the_full_size_network_on_antialiased_smaller_images():
    """input_size 8 on 16x16 data: the model takes 16x16 images, and its logits are exactly those
    of the same weights without the resize, fed F.interpolate(antialias=True)'s 8x8 images."""
    torch.manual_seed(0)
    small = build_model(downsampled_spec(8)).eval()
    full = build_model(downsampled_spec(0)).eval()
    # the resize adds no weights: same state_dict keys, so pruning / loading need no special case
    assert small.state_dict().keys() == full.state_dict().keys()
    full.load_state_dict(small.state_dict())
    x = torch.rand(5, *FULL)
    resized = F.interpolate(x, size=(8, 8), mode="bilinear", antialias=True, align_corners=False)
    with torch.no_grad():
        torch.testing.assert_close(small(x), full(resized), atol=1e-5, rtol=0)
        # and not what the same weights give on the full-size images (the check can fail)
        assert (small(x) - full(x)).abs().max() > 1e-2
    # the network behind the resize costs what it costs on 8x8 images (the resize is not counted)
    assert count_macs(small, FULL) == count_macs(full, (1, 8, 8)) < count_macs(full, FULL) / 3
