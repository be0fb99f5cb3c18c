import pytest
import torch

from shrinkflow.model_files.pt import load_model, save_model
from shrinkflow.nets.zoo import build_model, count_macs, count_params, final_linear, make_spec
from shrinkflow.params.common import ModelSpec

ARCHS = [ModelSpec(arch="cnn", widths=[8, 16]), ModelSpec(arch="resnet18"),
         ModelSpec(arch="mobilenet_v2", width_mult=0.25)]


def spec_for(model_params, channels, classes=7):
    return make_spec(model_params, channels, classes, [0.5] * channels, [0.25] * channels)


@pytest.mark.parametrize("model_params", ARCHS, ids=lambda m: m.arch)
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("size", [8, 28, 32])
def test_zoo_shapes(model_params, channels, size):
    model = build_model(spec_for(model_params, channels)).eval()
    with torch.no_grad():
        out = model(torch.rand(2, channels, size, size))
    assert out.shape == (2, 7)
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
    # a 3x3 conv 1->4 channels on 8x8 alone is 8*8*4*9 MACs; the whole net must exceed it
    assert count_macs(small, (1, 8, 8)) > 8 * 8 * 4 * 9


@pytest.mark.parametrize("model_params", ARCHS, ids=lambda m: m.arch)
def test_save_load_round_trip_is_exact_and_weights_only(tmp_path, model_params):
    torch.manual_seed(0)
    spec = spec_for(model_params, 3)
    model = build_model(spec).eval()
    save_model(tmp_path / "m.pt", model, spec, note="x")
    payload = torch.load(tmp_path / "m.pt", weights_only=True)
    assert payload["spec"] == spec and payload["meta"] == {"note": "x"}
    loaded, _ = load_model(tmp_path / "m.pt")
    x = torch.rand(2, 3, 8, 8)
    assert torch.equal(model(x), loaded(x))
