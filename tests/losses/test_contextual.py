"""Contextual loss against a brute-force double loop over Mechrez et al.'s definitions; gradcheck; size guard."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from facelab.losses import ContextualLoss, contextual_loss, contextual_similarity


def brute_force_cx(x: torch.Tensor, y: torch.Tensor, h: float, eps: float) -> float:
    """CX(X, Y) of one sample, x: (C, N), y: (C, M), with plain Python loops over the paper's definitions."""
    c, n = x.shape
    m = y.shape[1]
    mu = [sum(float(y[k, j]) for j in range(m)) / m for k in range(c)]
    xs = [[float(x[k, i]) - mu[k] for k in range(c)] for i in range(n)]
    ys = [[float(y[k, j]) - mu[k] for k in range(c)] for j in range(m)]

    def cos(a, b):
        return sum(p * q for p, q in zip(a, b)) / (math.sqrt(sum(p * p for p in a)) * math.sqrt(sum(q * q for q in b)))

    d = [[1.0 - cos(xs[i], ys[j]) for j in range(m)] for i in range(n)]
    cx = []
    for i in range(n):
        d_min = min(d[i])
        w = [math.exp((1.0 - d[i][j] / (d_min + eps)) / h) for j in range(m)]
        cx.append([wj / sum(w) for wj in w])
    return sum(max(cx[i][j] for i in range(n)) for j in range(m)) / m


def test_matches_brute_force():
    torch.manual_seed(0)
    x = torch.randn(2, 4, 3, 2, dtype=torch.float64)
    y = torch.randn(2, 4, 2, 2, dtype=torch.float64)  # a different number of positions
    for h in (0.5, 0.1):
        cx = contextual_similarity(x, y, bandwidth=h, eps=1e-5)
        expected = [brute_force_cx(x[b].flatten(1), y[b].flatten(1), h, 1e-5) for b in range(2)]
        torch.testing.assert_close(cx, torch.tensor(expected, dtype=torch.float64))
        loss = contextual_loss(x, y, bandwidth=h)
        assert loss.item() == pytest.approx(sum(-math.log(v) for v in expected) / 2)


def test_invariant_to_positions_and_zero_for_a_permutation():
    torch.manual_seed(0)
    y = torch.randn(1, 8, 3, 3)
    shuffled = y.flatten(2)[..., torch.randperm(9)].view_as(y)  # same features, other positions
    assert contextual_loss(shuffled, y).item() == pytest.approx(0.0, abs=1e-3)
    assert contextual_loss(torch.randn(1, 8, 3, 3), y).item() > 0.5


def test_gradcheck():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(1, 3, 2, 2, dtype=torch.float64, generator=gen, requires_grad=True)
    y = torch.randn(1, 3, 2, 3, dtype=torch.float64, generator=gen, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: contextual_loss(a, b, bandwidth=0.5), (x, y))


def test_refuses_oversize_maps():
    with pytest.raises(ValueError, match=r"\(9, 9\).*81 x 81.*max_positions=64"):
        contextual_loss(torch.zeros(1, 2, 9, 9), torch.zeros(1, 2, 9, 9), max_positions=64)
    loss_fn = ContextualLoss(nn.Identity(), max_positions=16)
    with pytest.raises(ValueError, match="max_positions=16"):
        loss_fn(torch.rand(1, 3, 5, 5), torch.rand(1, 3, 4, 4))


class TwoLevels(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.b = nn.Conv2d(4, 4, 3, stride=2, padding=1)

    def forward(self, x):
        fa = torch.relu(self.a(x))
        return [fa, torch.relu(self.b(fa))]


def test_module_with_injected_extractor_and_vgg(capsys):
    torch.manual_seed(0)
    extractor = TwoLevels()
    loss_fn = ContextualLoss(extractor, layer_weights=(1.0, 2.0))
    assert not any(p.requires_grad for p in loss_fn.parameters())
    x, y = torch.rand(2, 3, 6, 6, requires_grad=True), torch.rand(2, 3, 6, 6)
    fx, fy = extractor(x), extractor(y)
    expected = contextual_loss(fx[0], fy[0]) + 2.0 * contextual_loss(fx[1], fy[1])
    loss = loss_fn(x, y)
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert x.grad.abs().sum() > 0
    capsys.readouterr()
    vgg = ContextualLoss(allow_random=True, layers=("relu2_2", "relu3_2"))
    assert "VGG19 (ContextualLoss)" in capsys.readouterr().err
    assert torch.isfinite(vgg(torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16)))
    with pytest.raises(ValueError, match="allow_random"):
        ContextualLoss()
