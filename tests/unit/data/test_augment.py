"""Augmentation: seeded, applied on whole uint8 batches, and exactly a padded crop / mirror."""

import pytest
import torch

from shrinkflow.data.augment import make_augment, random_crop_flip
from shrinkflow.nets.zoo import build_model
from shrinkflow.params.common import TrainConfig
from shrinkflow.training.loop import fit, iterate_batches


def batch(n=16, c=2, h=6, w=5):
    return torch.randint(1, 256, (n, c, h, w), generator=torch.Generator().manual_seed(0),
                         dtype=torch.int64).to(torch.uint8)


def shifted(x, dy, dx, padding):
    """The reference crop: zero-pad, then cut the H x W window at (dy, dx)."""
    _, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (padding,) * 4)
    return padded[:, :, dy : dy + h, dx : dx + w]


def test_crop_is_a_padded_window_at_a_random_offset():
    x = batch()
    out = random_crop_flip(x, padding=2, flip=False, generator=torch.Generator().manual_seed(3))
    assert out.dtype == torch.uint8 and out.shape == x.shape
    offsets = torch.randint(0, 5, (2, len(x)), generator=torch.Generator().manual_seed(3))
    for i in range(len(x)):
        dy, dx = offsets[:, i].tolist()
        assert torch.equal(out[i : i + 1], shifted(x[i : i + 1], dy, dx, 2))
    assert len({tuple(o) for o in offsets.T.tolist()}) > 1  # not one offset for the whole batch


def test_flip_mirrors_about_half_the_images():
    x = batch(n=200)
    gen = torch.Generator().manual_seed(1)
    out = random_crop_flip(x, padding=1, flip=True, generator=gen)
    replay = torch.Generator().manual_seed(1)
    offsets = torch.randint(0, 3, (2, len(x)), generator=replay)
    mirrored = torch.rand(len(x), generator=replay) < 0.5
    for i in range(len(x)):
        dy, dx = offsets[:, i].tolist()
        expected = shifted(x[i : i + 1], dy, dx, 1)
        assert torch.equal(out[i : i + 1], expected.flip(-1) if mirrored[i] else expected)
    assert 60 < int(mirrored.sum()) < 140


def test_same_seed_same_batches_other_seed_other_batches(tiny_data):
    def batches(seed, mode="crop_flip"):
        aug = make_augment(mode, 2, seed)
        gen = torch.Generator().manual_seed(seed)
        return [xb for xb, _ in iterate_batches(tiny_data.train, 32, torch.device("cpu"), gen,
                                                augment=aug)]

    a, b, c = batches(0), batches(0), batches(1)
    assert all(torch.equal(p, q) for p, q in zip(a, b, strict=True))
    assert not all(torch.equal(p, q) for p, q in zip(a, c, strict=True))
    plain = batches(0, "none")
    assert not torch.equal(a[0], plain[0])  # augmentation changed the images ...
    assert [len(p) for p in a] == [len(p) for p in plain]  # ... not the batch order or sizes


def test_none_is_no_transform():
    assert make_augment("none", 4, 0) is None
    with pytest.raises(ValueError, match="unknown augmentation"):
        make_augment("rotate", 4, 0)


def test_fit_with_augmentation_is_repeatable_and_augments(tiny_data):
    def run(augment="crop_flip"):
        torch.manual_seed(0)
        model = build_model({"arch": "cnn", "widths": [4, 8], "depth": 1, "width_mult": 1.0,
                             "in_channels": 1, "num_classes": 4, "mean": [0.3], "std": [0.3]})
        cfg = TrainConfig(epochs=2, batch_size=32, lr=0.05, device="cpu", augment=augment,
                          crop_padding=2)
        history = fit(model, tiny_data.train, tiny_data.val, cfg, log=lambda _: None)
        return history, model.state_dict()

    (h1, s1), (h2, s2) = run(), run()
    assert h1 == h2
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    # and fit did augment: without it the same seed trains other weights
    _, plain = run("none")
    assert not all(torch.equal(s1[k], plain[k]) for k in s1)


def test_resized_crop_of_the_whole_image_is_the_image_or_its_mirror(monkeypatch):
    """With the crop area and aspect pinned to 1, each output is its input, mirrored for about
    half of them: the sampling grid is exact, and the flip is per image."""
    from shrinkflow.data import augment

    monkeypatch.setattr(augment, "RRC_SCALE", (1.0, 1.0))
    monkeypatch.setattr(augment, "RRC_RATIO", (1.0, 1.0))
    x = batch(n=32, h=8, w=8)
    out = augment.random_resized_crop_flip(x, torch.Generator().manual_seed(0))
    assert out.dtype == torch.uint8 and out.shape == x.shape
    same = [torch.equal(o, i) for o, i in zip(out, x, strict=True)]
    mirrored = [torch.equal(o, i.flip(-1)) for o, i in zip(out, x, strict=True)]
    assert all(s or m for s, m in zip(same, mirrored, strict=True))
    assert 4 <= sum(mirrored) <= 28


def test_resized_crop_zooms_in_and_repeats_with_its_seed():
    """A left-dark / right-light image: crops zoom and shift (the light share of the outputs
    varies, some fall on one side only), and the same seed gives the same bytes."""
    x = torch.zeros(64, 1, 16, 16, dtype=torch.uint8)
    x[..., 8:] = 200
    one = make_augment("resized_crop_flip", 4, seed=5)(x)
    two = make_augment("resized_crop_flip", 4, seed=5)(x)
    assert torch.equal(one, two)
    shares = [round((img > 100).float().mean().item(), 2) for img in one]
    assert len(set(shares)) > 10 and (min(shares) < 0.3 or max(shares) > 0.7)
