"""StyleGAN2 generator, discriminator and recipe pieces: shapes at several resolutions/channels, the w+ size,
R1 and path length against autograd / finite differences (float64), style mixing, truncation, w_avg tracking,
noise modes, EMA math, kimg bookkeeping and checkpoint-compatibility errors."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from facelab.losses import LazyR1, r1_penalty
from facelab.nn import (
    CheckpointMismatchError,
    Discriminator,
    Generator,
    KimgCounter,
    PathLengthRegularizer,
    ema_beta,
    lazy_optimizer_params,
    n_latent_for,
    path_lengths,
    style_mix,
    update_ema,
)
from facelab.nn.stylegan2 import DownConv2d, blur2d, describe_state_dict, normalize_2nd_moment

TINY = dict(z_dim=16, w_dim=16, mapping_layers=2, channel_base=256, channel_max=16)
TINY_D = dict(channel_base=256, channel_max=16)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny convolutions: one intra-op thread avoids spin-waiting on a loaded machine (restored afterwards)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_generator(resolution=16, channels=1, **kw) -> Generator:
    return Generator(resolution, channels, **(TINY | kw))


def test_n_latent_matches_the_paper():
    assert [n_latent_for(r) for r in (32, 64, 256, 1024)] == [8, 10, 14, 18]  # 18 x 512 at 1024^2
    with pytest.raises(ValueError, match="power of two"):
        n_latent_for(48)
    with pytest.raises(ValueError, match="power of two"):
        Generator(100)


def test_the_paper_1024_generator_has_config_f_size():
    g = Generator(1024, 3, channel_base=32768, channel_max=512)  # StyleGAN2 config F (FFHQ 1024^2, RGB)
    assert g.n_latent == 18 and g.synthesis.blocks["b4"].const.shape == (512, 4, 4)
    assert sum(p.numel() for p in g.parameters()) == 30_370_060  # the parameter count of NVlabs' 1024^2 G
    assert sum(p.numel() for p in g.mapping.parameters()) == 8 * (512 * 512 + 512)


@pytest.mark.parametrize(("resolution", "channels"), [(32, 1), (32, 3), (64, 1), (64, 3)])
def test_shapes_at_every_resolution_and_channel_count(resolution, channels):
    torch.manual_seed(0)
    g = tiny_generator(resolution, channels)
    d = Discriminator(resolution, channels, **TINY_D)
    z = torch.randn(4, 16)
    ws = g.mapping(z)
    assert ws.shape == (4, g.n_latent, 16) and g.n_latent == n_latent_for(resolution)
    img = g.synthesis(ws)
    assert img.shape == (4, channels, resolution, resolution) and img.dtype == torch.float32
    assert torch.isfinite(img).all() and img.std() > 0  # linear float output, no squashing
    assert g(z).shape == img.shape and (g.resolution, g.channels) == (resolution, channels)
    logits = d(img)
    assert logits.shape == (4,)
    with pytest.raises(ValueError, match=f"Discriminator expects \\(B, {channels}, {resolution}, {resolution}\\)"):
        d(torch.randn(4, channels + 1, resolution, resolution))


def test_every_parameter_gets_a_gradient():
    torch.manual_seed(0)
    g, d = tiny_generator(16), Discriminator(16, 1, **TINY_D)
    d(g(torch.randn(4, 16))).sum().backward()
    for name, p in [*g.named_parameters(), *d.named_parameters()]:
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_grouped_and_nonfused_generators_agree():
    torch.manual_seed(0)
    g = tiny_generator(16)  # fused_modconv=None: non-fused in training mode, grouped in eval mode
    g_grouped = tiny_generator(16, fused_modconv=True)
    g_grouped.load_state_dict(g.state_dict())
    ws = g.mapping(torch.randn(3, 16))
    train, grouped = g.synthesis(ws, noise_mode="const"), g_grouped.synthesis(ws, noise_mode="const")
    torch.testing.assert_close(train, grouped, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(g.eval().synthesis(ws, noise_mode="const"), grouped, atol=1e-5, rtol=1e-5)
    assert g.synthesis.layers()[0].conv.fused is None and g_grouped.synthesis.layers()[0].conv.fused is True


def test_mapping_normalizes_z_and_uses_the_lr_multiplier():
    torch.manual_seed(0)
    g = tiny_generator(16, mapping_lr_multiplier=0.01)
    z = torch.randn(3, 16)
    torch.testing.assert_close(g.mapping(z * 7.0), g.mapping(z), atol=1e-5, rtol=1e-5)  # z normalised
    assert normalize_2nd_moment(z).square().mean(dim=1).allclose(torch.ones(3), atol=1e-5)
    layer = g.mapping.layers[0]
    assert layer.weight_gain == pytest.approx(0.01 / math.sqrt(16)) and layer.weight.std() > 10  # stored / 0.01
    ws = g.mapping(z)
    assert torch.equal(ws[:, 0], ws[:, -1])  # one w broadcast to every style


def test_w_avg_tracking_and_truncation():
    torch.manual_seed(0)
    g = tiny_generator(16, w_avg_beta=0.995)
    z = torch.randn(8, 16)
    assert torch.equal(g.w_avg, torch.zeros(16))
    w = g.mapping(z, update_w_avg=True)[:, 0]
    torch.testing.assert_close(g.w_avg, 0.005 * w.mean(dim=0))  # lerp(mean w, w_avg, 0.995) from zeros
    g.mapping(z)  # no update by default
    torch.testing.assert_close(g.w_avg, 0.005 * w.mean(dim=0))
    zero = g.mapping(torch.randn(5, 16), truncation_psi=0.0)
    torch.testing.assert_close(zero, g.w_avg.expand(5, g.n_latent, 16))  # psi = 0 -> w_avg
    half = g.mapping(z, truncation_psi=0.5, truncation_cutoff=2)
    full = g.mapping(z)
    torch.testing.assert_close(half[:, :2], g.w_avg + 0.5 * (full[:, :2] - g.w_avg))
    torch.testing.assert_close(half[:, 2:], full[:, 2:])  # styles past the cutoff untouched


def test_style_mixing_takes_two_latents_at_a_crossover():
    torch.manual_seed(0)
    b, n, d = 64, 8, 4
    ws, other = torch.randn(b, n, d), torch.randn(b, n, d)
    mixed = style_mix(ws, other, prob=1.0, generator=torch.Generator().manual_seed(1))
    cutoffs = []
    for i in range(b):
        from_first = (mixed[i] == ws[i]).all(dim=1)
        k = int(from_first.sum())
        assert 1 <= k < n  # a crossover strictly inside: both latents contribute
        assert from_first[:k].all() and (mixed[i, k:] == other[i, k:]).all()
        cutoffs.append(k)
    assert len(set(cutoffs)) > 3  # random crossovers
    assert torch.equal(style_mix(ws, other, prob=0.0), ws)
    frac = (style_mix(ws.repeat(20, 1, 1), other.repeat(20, 1, 1), prob=0.9) != ws.repeat(20, 1, 1)).any(2).any(1)
    assert 0.8 < frac.float().mean() < 0.97
    with pytest.raises(ValueError, match="two"):
        style_mix(ws, other[:, :3])


def test_noise_modes_and_explicit_noise():
    torch.manual_seed(0)
    g = tiny_generator(16)
    for layer in g.synthesis.layers():
        layer.noise.strength.data.fill_(0.5)
    ws = g.mapping(torch.randn(2, 16))
    const = g.synthesis(ws, noise_mode="const")
    assert torch.equal(const, g.synthesis(ws, noise_mode="const"))
    assert torch.equal(g.synthesis(ws, noise_mode="none"), g.synthesis(ws, noise_mode="none"))
    assert not torch.allclose(g.synthesis(ws, noise_mode="random"), g.synthesis(ws, noise_mode="random"))
    assert not torch.allclose(const, g.synthesis(ws, noise_mode="none"))
    noise = [layer.noise_const.clone() for layer in g.synthesis.layers()]
    assert [tuple(n.shape) for n in noise] == g.synthesis.noise_shapes()
    torch.testing.assert_close(g.synthesis(ws, noise=noise), const)
    with pytest.raises(ValueError, match="noise_mode"):
        g.synthesis(ws, noise_mode="fixed")
    with pytest.raises(ValueError, match="noise must hold"):
        g.synthesis(ws, noise=noise[:-1])


def test_bad_latents_give_clear_errors():
    g = tiny_generator(16).eval()  # eval mode checks values (training skips the device sync)
    with pytest.raises(ValueError, match=r"ws of shape \(B, 6, 16\)"):
        g.synthesis(torch.randn(2, 5, 16))
    with pytest.raises(ValueError, match="NaN"):
        g.synthesis(torch.full((2, 6, 16), float("nan")))
    with pytest.raises(ValueError, match="NaN"):
        g.mapping(torch.tensor([[float("nan")] * 16]))
    with pytest.raises(ValueError, match=r"z of shape \(B, 16\)"):
        g.mapping(torch.randn(2, 8))
    assert torch.isnan(g.train().synthesis(torch.full((2, 6, 16), float("nan")))).all()


def test_r1_against_finite_differences_float64():
    torch.manual_seed(0)
    d = Discriminator(8, 1, **TINY_D).double()
    real = torch.randn(4, 1, 8, 8, dtype=torch.float64, requires_grad=True)
    penalty = r1_penalty(d(real), real)
    (grad,) = torch.autograd.grad(d(real).sum(), real)
    for _ in range(3):  # directional derivatives of sum_b D(x)_b (mbstd couples the samples)
        v = torch.randn_like(real)
        eps = 1e-6
        fd = (d(real + eps * v).sum() - d(real - eps * v).sum()) / (2 * eps)
        assert float(fd.detach()) == pytest.approx(float((grad * v).sum()), rel=1e-5, abs=1e-9)
    torch.testing.assert_close(penalty, grad.square().flatten(1).sum(1).mean())
    penalty.backward()  # create_graph: the penalty trains D (every weight; the logit's bias has no input gradient)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for n, p in d.named_parameters() if n.endswith("weight"))
    lazy = LazyR1(gamma=2.0, interval=16)
    values = [lazy(d, real.detach()).detach() for _ in range(17)]
    torch.testing.assert_close(values[0], 16 * 0.5 * 2.0 * penalty.detach(), check_dtype=False)
    assert all(float(v) == 0 for v in values[1:16]) and float(values[16]) > 0


def test_path_length_against_the_explicit_jacobian_float64():
    torch.manual_seed(0)
    g = tiny_generator(8, z_dim=4, w_dim=3).double()
    ws = g.mapping(torch.randn(2, 4, dtype=torch.float64)).detach().requires_grad_(True)
    fake = g.synthesis(ws, noise_mode="const")
    y = torch.randn_like(fake) / 8
    lengths = path_lengths(fake, ws, y)
    jac = torch.autograd.functional.jacobian(lambda w: g.synthesis(w, noise_mode="const"), ws.detach(),
                                             vectorize=True)
    for b in range(2):
        jty = torch.einsum("chw,chwld->ld", y[b], jac[b, :, :, :, b])  # J_w^T y (Eq. 4)
        assert float(lengths[b].detach()) == pytest.approx(float(jty.square().sum(1).mean().sqrt()), rel=1e-8)
    reg = PathLengthRegularizer(weight=2.0, interval=4, decay=0.01).double()
    assert reg.due and reg.batch_size(32) == 16 and reg.batch_size(1) == 1
    torch.manual_seed(1)
    value = reg(fake, ws)
    torch.manual_seed(1)
    again = path_lengths(g.synthesis(ws, noise_mode="const"), ws)
    a = 0.01 * again.mean()  # the EMA of the mean length, updated from 0 with decay 0.01
    torch.testing.assert_close(reg.pl_mean, a.detach())
    torch.testing.assert_close(value, 2.0 * 4 * (again - a.detach()).square().mean())
    value.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in g.synthesis.parameters())
    assert not reg.due
    for _ in range(3):
        reg.step()
    assert reg.due and reg.optimizer_ratio() == pytest.approx(0.8)


def test_ema_math():
    assert ema_beta(32, half_life_kimg=10) == pytest.approx(0.5 ** (32 / 10_000))
    # after half_life images the old weights count half
    assert ema_beta(32, 10) ** (10_000 / 32) == pytest.approx(0.5)
    assert ema_beta(32, 10, rampup=0.05, cur_nimg=1000) == pytest.approx(0.5 ** (32 / 50))
    assert ema_beta(32, 10, rampup=0.05, cur_nimg=10**7) == pytest.approx(ema_beta(32, 10))
    torch.manual_seed(0)
    g = tiny_generator(8)
    g_ema = copy.deepcopy(g)
    for p in g.parameters():
        p.data.add_(1.0)
    g.mapping.w_avg.fill_(3.0)
    before = [p.clone() for p in g_ema.parameters()]
    update_ema(g_ema, g, beta=0.9)
    for p_ema, p0, p in zip(g_ema.parameters(), before, g.parameters()):
        torch.testing.assert_close(p_ema, 0.9 * p0 + 0.1 * p)
    assert torch.equal(g_ema.w_avg, g.w_avg)  # buffers copied
    lr, betas = lazy_optimizer_params(0.002, (0.0, 0.99), 16)
    assert lr == pytest.approx(0.002 * 16 / 17) and betas == pytest.approx((0.0, 0.99 ** (16 / 17)))
    assert lazy_optimizer_params(0.002, (0.0, 0.99), 1) == (0.002, (0.0, 0.99))


def test_kimg_counter():
    counter = KimgCounter()
    assert counter.kimg == 0
    crossings = []
    for _ in range(10):
        counter.advance(300)
        crossings.append(counter.crossed(every_kimg=1))
    assert counter.kimg == 3.0 and crossings.count(True) == 3 and crossings[3]  # 900 -> 1200 crosses 1 kimg
    restored = KimgCounter()
    restored.load_state_dict(counter.state_dict())
    assert restored.kimg == 3.0


class Wrapper(nn.Module):
    def __init__(self, g: Generator) -> None:
        super().__init__()
        self.generator = g


def test_a_checkpoint_of_another_resolution_or_channel_count_fails_clearly():
    g64, g32, g32_rgb = tiny_generator(64), tiny_generator(32), tiny_generator(32, 3)
    assert describe_state_dict(g64.state_dict()) == "64^2, 1-channel"
    with pytest.raises(CheckpointMismatchError, match=r"checkpoint's Generator is 64\^2, 1-channel but this "
                                                      r"Generator is 32\^2, 1-channel"):
        g32.load_state_dict(g64.state_dict())
    with pytest.raises(CheckpointMismatchError, match=r"is 32\^2, 3-channel but this Generator is 32\^2, 1-channel"):
        g32.load_state_dict(g32_rgb.state_dict())
    with pytest.raises(CheckpointMismatchError, match=r"'generator' is 64\^2"):  # nested, as in a LightningModule
        Wrapper(g32).load_state_dict(Wrapper(g64).state_dict())
    d64, d32 = Discriminator(64, 1, **TINY_D), Discriminator(32, 1, **TINY_D)
    with pytest.raises(CheckpointMismatchError, match=r"Discriminator is 64\^2, 1-channel"):
        d32.load_state_dict(d64.state_dict())
    g32.load_state_dict(tiny_generator(32).state_dict())  # the same architecture loads


def test_float64_and_mbstd_batch_rule():
    g = tiny_generator(8).double()
    d = Discriminator(8, 1, **TINY_D).double()
    out = d(g(torch.randn(4, 16, dtype=torch.float64)))
    assert out.dtype == torch.float64
    with pytest.raises(ValueError, match="divisible"):
        Discriminator(8, 1, **TINY_D)(torch.randn(6, 1, 8, 8))


def test_resampling_filter_and_down_convs():
    ones = torch.ones(1, 2, 8, 8)
    blurred = blur2d(ones, padding=1)
    assert blurred.shape == (1, 2, 7, 7)
    torch.testing.assert_close(blurred[..., 1:-1, 1:-1], torch.ones(1, 2, 5, 5))  # unit DC gain ([1,3,3,1] / 8)
    x = torch.randn(2, 3, 16, 16)
    assert DownConv2d(3, 5, 3)(x).shape == (2, 5, 8, 8) and DownConv2d(3, 5, 1, bias=False)(x).shape == (2, 5, 8, 8)
