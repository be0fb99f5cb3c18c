"""Your own model code (model.arch: factory) and pretrained weights for any architecture: built
from user_nets/ only, stored as a path + options (weights_only files), pruned, exported, and
initialised from a state_dict with another head."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from shrinkflow.compress.prune import build_pruner, make_importance, pruning_step
from shrinkflow.compress.prune_families import check_rebuilds
from shrinkflow.core.errors import ShrinkflowError
from shrinkflow.model_files.pt import load_model, save_model
from shrinkflow.model_files.user_weights import load_into, read_weights
from shrinkflow.nets.zoo import build_model, count_macs, final_linear, make_spec
from shrinkflow.params.common import ModelSpec

TINY_NET = '''
from torch import nn

def build(num_classes, in_channels, width=8):
    return nn.Sequential(
        nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
        nn.Conv2d(width, 2 * width, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(2 * width),
        nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * width, num_classes))
'''
SHAPE = (3, 16, 16)


@pytest.fixture
def repo(tmp_path, monkeypatch):
    (tmp_path / "user_nets").mkdir()
    (tmp_path / "user_nets" / "tiny.py").write_text(TINY_NET)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _spec(**options) -> dict:
    model = ModelSpec(arch="factory", factory="user_nets.tiny:build", options=options)
    return make_spec(model, 3, 5, [0.5] * 3, [0.25] * 3, image_hw=list(SHAPE[1:]))


def test_factory_model_round_trips_a_weights_only_file(repo):
    spec = _spec(width=16)
    assert spec["factory"] == "user_nets.tiny:build" and spec["options"] == {"width": 16}
    torch.manual_seed(0)
    model = build_model(spec).eval()
    assert model.body[0].out_channels == 16  # the options reached the function
    save_model(repo / "m.pt", model, spec, role="student")
    payload = torch.load(repo / "m.pt", weights_only=True)  # path + options, no pickled code
    assert payload["spec"]["factory"] == "user_nets.tiny:build"
    again, _ = load_model(repo / "m.pt", role="student")
    x = torch.rand(3, *SHAPE)
    torch.testing.assert_close(again(x), model(x), atol=0, rtol=0)


def test_factory_model_prunes_and_rebuilds(repo):
    spec = _spec()
    torch.manual_seed(0)
    model = build_model(spec).eval()
    macs = count_macs(model, SHAPE)
    pruning_step(build_pruner(model, SHAPE, make_importance("l2"), 0.5, 1,
                              [final_linear(model)]), 0)
    assert count_macs(model, SHAPE) < 0.6 * macs
    check_rebuilds(model, spec, SHAPE)


@pytest.mark.parametrize("path", ["os:system", "user_nets/tiny.py:build", "mypkg.nets:build",
                                  "user_nets.tiny"])
def test_factory_outside_user_nets_is_refused_before_import(repo, path):
    with pytest.raises(ValidationError, match=r"expected 'user_nets.<module>:<function>'"):
        ModelSpec(arch="factory", factory=path)
    spec = {**_spec(), "factory": path}  # a model file naming it is refused the same way
    with pytest.raises(ValueError, match=r"expected 'user_nets.<module>:<function>'"):
        build_model(spec)


def test_factory_needs_arch_factory():
    with pytest.raises(ValidationError, match="arch 'factory' and a factory path go together"):
        ModelSpec(arch="resnet18", factory="user_nets.tiny:build")


def test_pretrained_state_dict_with_another_head_is_reheaded(tmp_path):
    """ImageNet-style weights (1000 classes, standard stem at photo size) into a 5-class
    mobilenet_v3_small: every body tensor loaded, the head replaced and named."""
    torch.manual_seed(1)
    from torchvision.models import mobilenet_v3_small

    source = mobilenet_v3_small(num_classes=1000)
    torch.save(source.state_dict(), tmp_path / "imagenet.pt")
    spec = make_spec(ModelSpec(arch="mobilenet_v3_small"), 3, 5, [0.5] * 3, [0.25] * 3,
                     image_hw=[128, 128])
    model = build_model(spec)
    logs: list[str] = []
    load_into(model, spec, read_weights(tmp_path / "imagenet.pt"), log=logs.append)
    torch.testing.assert_close(model.body.features[0][0].weight, source.features[0][0].weight)
    assert model.body.classifier[3].out_features == 5
    assert "replaced head classifier.3 (1000 -> 5 classes)" in logs[0]


def test_weights_for_another_arch_name_missing_and_unexpected_keys(tmp_path):
    from torchvision.models import resnet18

    torch.save(resnet18().state_dict(), tmp_path / "r18.pt")
    spec = make_spec(ModelSpec(arch="efficientnet_b0"), 3, 5, [0.5] * 3, [0.25] * 3,
                     image_hw=[128, 128])
    with pytest.raises(ShrinkflowError, match=r"another architecture: .* missing: "
                                              r"features\.0\.0\.weight, .*; unexpected: "
                                              r"conv1\.weight, "):
        load_into(build_model(spec), spec, read_weights(tmp_path / "r18.pt"))


def test_macs_count_conv_subclasses_of_factory_models():
    """A Conv2d subclass (as efficientnet-lite's static-padding conv) counts like a Conv2d: it
    used to count as zero, which made a factory teacher look 20x cheaper than it is."""
    from torch import nn

    class PaddedConv(nn.Conv2d):
        pass

    plain = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Flatten(), nn.Linear(8 * 64, 2))
    sub = nn.Sequential(PaddedConv(3, 8, 3, padding=1), nn.Flatten(), nn.Linear(8 * 64, 2))
    assert count_macs(sub, (3, 8, 8)) == count_macs(plain, (3, 8, 8)) > 8 * 64 * 27
