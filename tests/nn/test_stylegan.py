"""StyleGAN2 blocks: modulated convolution against a per-sample reference, demodulation keeps unit output std,
noise injection, minibatch standard deviation against a hand loop."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from facelab.nn import (
    MinibatchStdDev,
    ModulatedConv2d,
    NoiseInjection,
    minibatch_stddev,
    modulated_conv2d,
    modulated_conv2d_reference,
)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny convolutions: one intra-op thread avoids spin-waiting on a loaded machine (restored afterwards)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def reference_modulated_conv(x, weight, styles, demodulate, upsample=False):
    """StyleGAN2 Eq. 1 and 3, one sample at a time."""
    outs = []
    for b in range(x.shape[0]):
        w = weight * styles[b][None, :, None, None]
        if demodulate:
            w = w / torch.sqrt(w.square().sum(dim=(1, 2, 3), keepdim=True) + 1e-8)
        xb = x[b:b + 1]
        if upsample:
            xb = F.interpolate(xb, scale_factor=2, mode="bilinear", align_corners=False)
        outs.append(F.conv2d(xb, w, padding=weight.shape[-1] // 2))
    return torch.cat(outs)


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize(("demodulate", "upsample", "k"), [(True, False, 3), (False, False, 1), (True, True, 3)])
def test_grouped_modulated_conv_matches_the_per_sample_reference(demodulate, upsample, k, fused):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, 6, 6, generator=gen)
    weight, styles = torch.randn(5, 4, k, k, generator=gen), torch.randn(3, 4, generator=gen)
    out = modulated_conv2d(x, weight, styles, demodulate=demodulate, upsample=upsample, fused=fused)
    expected = reference_modulated_conv(x, weight, styles, demodulate, upsample)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(modulated_conv2d_reference(x, weight, styles, demodulate, upsample=upsample), expected)
    assert out.shape == (3, 5, 12 if upsample else 6, 12 if upsample else 6)


@pytest.mark.parametrize("fused", [True, False])
def test_demodulation_gives_unit_output_std_whatever_the_style(fused):
    torch.manual_seed(0)
    conv = ModulatedConv2d(64, 32, 3, style_dim=16, fused=fused)
    x = torch.randn(4, 64, 16, 16)
    with torch.no_grad():
        conv.affine.weight.mul_(20)  # styles far from 1: s ~ N(1, 20^2 / 16)
        out = conv(x, torch.randn(4, 16))
        raw = ModulatedConv2d(64, 32, 3, style_dim=16, demodulate=False)
        raw.load_state_dict(conv.state_dict())
        plain = raw(x, torch.randn(4, 16))
    per_sample = out[..., 1:-1, 1:-1].std(dim=(1, 2, 3))  # interior: zero padding shrinks the border
    assert (per_sample - 1).abs().max() < 0.1
    assert plain[..., 1:-1, 1:-1].std() > 2  # without Eq. 3 the output scale follows the styles


def test_modulated_conv_module_and_gradients():
    torch.manual_seed(0)
    conv = ModulatedConv2d(4, 6, 3, style_dim=8, upsample=True)
    torch.testing.assert_close(conv.affine(torch.zeros(1, 8)), torch.ones(1, 4))  # style bias starts at 1
    x, w = torch.randn(2, 4, 5, 5), torch.randn(2, 8)
    out = conv(x, w)
    assert out.shape == (2, 6, 10, 10)
    out.square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in conv.parameters())
    with pytest.raises(ValueError, match=r"\(B, 4, H, W\)"):
        conv(torch.randn(2, 3, 5, 5), w)


def test_noise_injection():
    torch.manual_seed(0)
    noise = NoiseInjection()
    x = torch.randn(2, 3, 4, 4)
    assert torch.equal(noise(x), x)  # strength starts at 0
    with torch.no_grad():
        noise.strength.fill_(0.5)
    n = torch.randn(2, 1, 4, 4)
    torch.testing.assert_close(noise(x, n), x + 0.5 * n)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.equal(noise(x, generator=g1), noise(x, generator=g2))
    noise(x).sum().backward()
    assert noise.strength.grad is not None
    with pytest.raises(ValueError, match="noise must be"):
        noise(x, torch.randn(2, 3, 4, 4))


def test_minibatch_stddev_matches_a_hand_loop():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(8, 6, 3, 3, generator=gen, dtype=torch.float64)
    out = minibatch_stddev(x, group_size=4, num_channels=2)
    assert out.shape == (8, 8, 3, 3) and torch.equal(out[:, :6], x)
    n_groups = 8 // 4
    for n in range(8):
        members = x[n % n_groups::n_groups]  # sample n belongs to group n mod (B / G)
        std = members.std(dim=0, unbiased=False)  # (C, H, W)
        for f in range(2):
            expected = std[3 * f:3 * (f + 1)].mean()
            torch.testing.assert_close(out[n, 6 + f], torch.full((3, 3), float(expected), dtype=torch.float64))
    assert MinibatchStdDev(group_size=16)(x.float()).shape == (8, 7, 3, 3)  # group clipped to the batch
    with pytest.raises(ValueError, match="divisible"):
        minibatch_stddev(torch.randn(6, 4, 2, 2), group_size=4)
    assert torch.autograd.gradcheck(lambda t: minibatch_stddev(t, 2), (x[:4, :2].clone().requires_grad_(),))


def test_minibatch_stddev_grows_with_batch_diversity():
    torch.manual_seed(0)
    same = torch.randn(1, 4, 2, 2).repeat(4, 1, 1, 1)
    assert minibatch_stddev(same)[:, -1].max() < 1e-3
    diverse = torch.randn(4, 4, 2, 2) * 3
    assert abs(minibatch_stddev(diverse)[0, -1, 0, 0].item() - 3 * math.sqrt(3 / 4)) < 1.0


def test_float64():
    x, w = torch.randn(2, 3, 4, 4, dtype=torch.float64), torch.randn(2, 5, dtype=torch.float64)
    y = NoiseInjection().double()(ModulatedConv2d(3, 4, 3, style_dim=5).double()(x, w))
    assert y.dtype == torch.float64 and minibatch_stddev(y, 2).dtype == torch.float64


@pytest.mark.parametrize("fused", [True, False])
def test_modulated_conv_gradcheck(fused):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 2, 3, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(3, 2, 3, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    styles = torch.randn(2, 2, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *a: modulated_conv2d(*a, upsample=True, fused=fused), (x, weight, styles))
