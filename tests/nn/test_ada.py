"""Adaptive discriminator augmentation: identity at p = 0, exact integer transforms, per-sample probabilities,
differentiability, and p following the overfitting heuristic of a real (tiny) discriminator."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from facelab.losses import discriminator_loss
from facelab.nn import AdaptiveAugment, AugmentSettings, Discriminator, augment

OFF = dict(xflip=0.0, rotate90=0.0, xint=0.0, scale=0.0, rotate=0.0, aniso=0.0, xfrac=0.0, brightness=0.0,
           contrast=0.0, noise=0.0, cutout=0.0)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny convolutions: one intra-op thread avoids spin-waiting on a loaded machine (restored afterwards)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def maps(b=8, c=1, size=16, seed=0):
    return torch.randn(b, c, size, size, generator=torch.Generator().manual_seed(seed))


def test_p_zero_and_all_off_are_the_identity():
    x = maps()
    assert torch.equal(augment(x, 0.0), x)
    torch.testing.assert_close(augment(x, torch.tensor(0.0)), x)
    torch.testing.assert_close(augment(x, 1.0, AugmentSettings(**OFF)), x)


def test_xflip_and_rotate90_are_exact():
    torch.manual_seed(0)
    x = maps(16)
    out = augment(x, 1.0, AugmentSettings(**(OFF | dict(xflip=1.0))))
    flipped = [torch.allclose(o, x_.flip(-1), atol=1e-5) for o, x_ in zip(out, x)]
    kept = [torch.allclose(o, x_, atol=1e-5) for o, x_ in zip(out, x)]
    assert all(f or k for f, k in zip(flipped, kept)) and any(flipped) and any(kept)  # flips half the time
    out = augment(x, 1.0, AugmentSettings(**(OFF | dict(rotate90=1.0))))
    for o, x_ in zip(out, x):
        assert any(torch.allclose(o, torch.rot90(x_, k, dims=(-2, -1)), atol=1e-5) for k in range(4))
    with pytest.raises(ValueError, match="square"):
        augment(torch.randn(2, 1, 8, 16), 1.0, AugmentSettings(**(OFF | dict(rotate90=1.0))))


def test_integer_translation_moves_whole_pixels():
    torch.manual_seed(0)
    x = maps(8)
    out = augment(x, 1.0, AugmentSettings(**(OFF | dict(xint=1.0))))
    for o, x_ in zip(out, x):  # the interior is x shifted by an integer offset (reflection fills the border)
        match = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)
                 if torch.allclose(o[:, 4:12, 4:12], x_[:, 4 - dy:12 - dy, 4 - dx:12 - dx], atol=1e-5)]
        assert len(match) == 1


def test_each_sample_is_augmented_with_probability_p():
    torch.manual_seed(0)
    x = maps(400, size=8)
    out = augment(x, 0.3, AugmentSettings(**(OFF | dict(contrast=1.0))))
    changed = ~torch.isclose(out, x).all(dim=(1, 2, 3))
    assert 0.22 < changed.float().mean() < 0.38
    ratio = (out / x).flatten(1)[:, 0]
    torch.testing.assert_close(out, x * ratio[:, None, None, None])  # amplitude scaling about the neutral 0


def test_noise_cutout_and_gradients():
    torch.manual_seed(0)
    x = maps(4, c=3).requires_grad_(True)
    cut = augment(x, 1.0, AugmentSettings(**(OFF | dict(cutout=1.0))))
    zero_frac = (cut == 0).float().mean(dim=(1, 2, 3))
    assert ((zero_frac > 0.1) & (zero_frac < 0.4)).all()  # a quarter of the area (half the side), clipped
    noisy = augment(x, 1.0, AugmentSettings(**(OFF | dict(noise=1.0))))
    assert not torch.allclose(noisy, x)
    everything = AugmentSettings(**{k: 1.0 for k in OFF})
    y = augment(x, 1.0, everything)
    assert y.shape == x.shape and torch.isfinite(y).all()
    y.square().sum().backward()  # differentiable: G trains through the augmentation of its fakes
    assert x.grad is not None and x.grad.abs().sum() > 0


def overfit_discriminator(steps: int = 40) -> tuple[Discriminator, torch.Tensor]:
    """A tiny D trained on 4 fixed real maps against fresh noise: it overfits (positive logits on reals)."""
    torch.manual_seed(0)
    d = Discriminator(16, 1, channel_base=128, channel_max=8)
    reals = F.avg_pool2d(maps(4, seed=1), 3, 1, 1) * 3  # smooth, structured "maps"
    opt = torch.optim.Adam(d.parameters(), lr=0.01, betas=(0.0, 0.99))
    for _ in range(steps):
        loss = discriminator_loss(d(reals), d(torch.randn(4, 1, 16, 16)))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return d, reals


def test_p_rises_on_an_overfitting_discriminator_and_falls_on_an_underfitting_one():
    d, reals = overfit_discriminator()
    ada = AdaptiveAugment(p=0.0, target=0.6, ada_kimg=0.1, interval=4)  # 100 images for p to go 0 -> 1
    ps = []
    with torch.no_grad():
        for _ in range(8):
            ada.update(d(ada(reals)))
            ps.append(float(ada.p))
    assert float(ada.rt) > 0.6  # r_t = E[sign(D(real))] above the target: D overfits
    assert ps[:3] == [0.0, 0.0, 0.0] and ps[3] == pytest.approx(16 / 100) and ps[7] == pytest.approx(32 / 100)
    # an underfitting D (negative logits on reals) pushes p down, clamped at 0
    for _ in range(12):
        ada.update(-torch.ones(4))
    assert float(ada.rt) == -1 and float(ada.p) == 0.0
    fixed = AdaptiveAugment(p=0.4, target=None)
    for _ in range(8):
        fixed.update(torch.ones(4))
    assert float(fixed.p) == pytest.approx(0.4)
    assert set(ada.state_dict()) == {"p", "rt"}  # the adapted p resumes from checkpoints


def test_p_settles_near_the_target_in_closed_loop():
    """With ADA in the loop, p grows until the augmented reals' r_t comes down to the target, then stays."""
    d, reals = overfit_discriminator()
    torch.manual_seed(0)
    ada = AdaptiveAugment(p=0.0, target=0.6, ada_kimg=0.5, interval=1)  # 16 images per step: +-0.032
    ps, rts = [], []
    with torch.no_grad():
        for _ in range(100):
            ada.update(d(ada(reals.repeat(4, 1, 1, 1))))
            ps.append(float(ada.p))
            rts.append(float(ada.rt))
    assert rts[0] == 1.0  # unaugmented: the overfitting D is sure of every real
    settled_p, settled_rt = ps[50:], sum(rts[50:]) / 50
    assert abs(settled_rt - 0.6) < 0.15 and 0.1 < min(settled_p) and max(settled_p) < 0.95
    assert max(settled_p) - min(settled_p) < 0.25  # it settles instead of running away
    with pytest.raises(ValueError, match="0 <= p <= 1"):
        AdaptiveAugment(p=1.5)
