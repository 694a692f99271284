"""AdaIN / FiLM / AdaINResBlock (StarGAN v2): statistics, the formula, shortcut and sqrt(2) scaling, gradients."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from facelab.nn import AdaIN, AdaINResBlock, FiLM, PreActResBlock, adain, condition_mlp


def test_adain_output_statistics_are_beta_and_one_plus_gamma():
    torch.manual_seed(0)
    norm = AdaIN(6, condition_dim=4, eps=1e-8)
    x = torch.randn(3, 6, 16, 16) * 5 + 2
    condition = torch.randn(3, 4)
    out = norm(x, condition)
    gamma, beta = norm.gamma_beta(condition)
    torch.testing.assert_close(out.mean(dim=(2, 3)), beta, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.std(dim=(2, 3), unbiased=False), (1 + gamma).abs(), atol=1e-5, rtol=1e-5)


def test_adain_matches_the_hand_formula_and_gradcheck():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 4, 5, generator=gen, dtype=torch.float64)
    gamma, beta = torch.randn(2, 3, generator=gen, dtype=torch.float64), torch.randn(2, 3, generator=gen,
                                                                                     dtype=torch.float64)
    mean, var = x.mean(dim=(2, 3), keepdim=True), x.var(dim=(2, 3), unbiased=False, keepdim=True)
    expected = (1 + gamma[..., None, None]) * (x - mean) / torch.sqrt(var + 1e-5) + beta[..., None, None]
    torch.testing.assert_close(adain(x, gamma, beta), expected)
    inputs = tuple(t.clone().requires_grad_() for t in (x, gamma, beta))
    assert torch.autograd.gradcheck(adain, inputs)
    with pytest.raises(ValueError, match="gamma and beta"):
        adain(x, gamma[:, :2], beta)


def test_adain_condition_map_is_linear_or_mlp():
    assert isinstance(AdaIN(8, 5).fc, nn.Linear) and AdaIN(8, 5).fc.out_features == 16
    mlp = condition_mlp(5, 16, hidden_dims=(32, 32))
    assert [m.out_features for m in mlp if isinstance(m, nn.Linear)] == [32, 32, 16]
    assert sum(isinstance(m, nn.ReLU) for m in mlp) == 2
    norm = AdaIN(8, 5, hidden_dims=(32,))
    assert norm(torch.randn(2, 8, 4, 4), torch.randn(2, 5)).shape == (2, 8, 4, 4)
    with pytest.raises(ValueError, match=r"\(B, 5\) condition"):
        norm(torch.randn(2, 8, 4, 4), torch.randn(2, 4))
    with pytest.raises(ValueError, match=r"x \(B, 8, H, W\)"):
        norm(torch.randn(2, 7, 4, 4), torch.randn(2, 5))


def test_film_is_a_per_channel_affine_map():
    torch.manual_seed(0)
    film = FiLM(4, 3)
    x, c = torch.randn(2, 4, 5, 5), torch.randn(2, 3)
    gamma, beta = film.gamma_beta(c)
    torch.testing.assert_close(film(x, c), x * (1 + gamma)[..., None, None] + beta[..., None, None])
    nn.init.zeros_(film.fc.weight), nn.init.zeros_(film.fc.bias)
    assert torch.equal(film(x, c), x)  # zero map = identity (no normalisation, unlike AdaIN)


@pytest.mark.parametrize(("c_in", "c_out", "upsample"), [(8, 8, False), (8, 4, True), (4, 8, False)])
def test_adain_res_block_shapes_and_shortcut(c_in, c_out, upsample):
    torch.manual_seed(0)
    block = AdaINResBlock(c_in, c_out, condition_dim=5, upsample=upsample)
    assert (block.shortcut is not None) == (c_in != c_out)
    if block.shortcut is not None:
        assert block.shortcut.kernel_size == (1, 1) and block.shortcut.bias is None
    x, c = torch.randn(2, c_in, 6, 6), torch.randn(2, 5)
    out = block(x, c)
    size = 12 if upsample else 6
    assert out.shape == (2, c_out, size, size)
    # with the residual branch silenced, the output is the (up-sampled, projected) shortcut / sqrt(2)
    nn.init.zeros_(block.conv2.weight), nn.init.zeros_(block.conv2.bias)
    s = F.interpolate(x, scale_factor=2, mode="nearest") if upsample else x
    s = block.shortcut(s) if block.shortcut is not None else s
    torch.testing.assert_close(block(x, c), s / math.sqrt(2))


def test_adain_res_block_follows_the_condition_and_passes_gradients():
    torch.manual_seed(0)
    block = AdaINResBlock(4, 8, condition_dim=3, upsample=True)
    x = torch.randn(2, 4, 4, 4)
    c1, c2 = torch.randn(2, 3), torch.randn(2, 3)
    assert (block(x, c1) - block(x, c2)).abs().max() > 1e-3
    block(x, c1).square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in block.parameters())


def test_preact_res_block_downsamples_with_sqrt2_sum():
    torch.manual_seed(0)
    block = PreActResBlock(4, 8, downsample=True)
    x = torch.randn(2, 4, 8, 8)
    assert block(x).shape == (2, 8, 4, 4)
    block(x).square().mean().backward()
    assert all(p.grad is not None for p in block.parameters())
    nn.init.zeros_(block.conv2.weight), nn.init.zeros_(block.conv2.bias)
    torch.testing.assert_close(block(x), F.avg_pool2d(block.shortcut(x), 2) / math.sqrt(2))
    same = PreActResBlock(4, 4)
    assert same.shortcut is None and same(x).shape == x.shape
