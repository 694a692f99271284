"""GAN losses against hand-computed values; R1 against a linear discriminator's known gradient and gradcheck; lazy
R1 cadence and scaling."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from facelab.losses import (
    AdversarialLoss,
    LazyR1,
    discriminator_loss,
    feature_matching_loss,
    generator_loss,
    r1_penalty,
)

REAL = torch.tensor([2.0, -1.0])
FAKE = torch.tensor([[0.5], [-3.0]])  # any shape


def softplus(v: float) -> float:
    return math.log1p(math.exp(v))


def test_non_saturating():
    assert generator_loss(FAKE).item() == pytest.approx((softplus(-0.5) + softplus(3.0)) / 2)
    expected = (softplus(-2.0) + softplus(1.0)) / 2 + (softplus(0.5) + softplus(-3.0)) / 2
    assert discriminator_loss(REAL, FAKE).item() == pytest.approx(expected)


def test_hinge():
    assert generator_loss(FAKE, "hinge").item() == pytest.approx(-(0.5 - 3.0) / 2)
    # relu(1 - r): 0, 2 -> 1; relu(1 + f): 1.5, 0 -> 0.75
    assert discriminator_loss(REAL, FAKE, "hinge").item() == pytest.approx(1.0 + 0.75)


def test_lsgan():
    assert generator_loss(FAKE, "lsgan").item() == pytest.approx(0.5 * (0.25 + 16.0) / 2)
    assert discriminator_loss(REAL, FAKE, "lsgan").item() == pytest.approx(0.5 * (1 + 4) / 2 + 0.5 * (0.25 + 9) / 2)


def test_sequences_of_logit_maps_and_module():
    # a U-Net discriminator's global logits and per-pixel maps: the losses add
    maps_real, maps_fake = torch.randn(2, 1, 4, 4), torch.randn(2, 1, 4, 4)
    for kind in ("non_saturating", "hinge", "lsgan"):
        loss = AdversarialLoss(kind)
        both = loss.discriminator([REAL, maps_real], [FAKE, maps_fake])
        parts = discriminator_loss(REAL, FAKE, kind) + discriminator_loss(maps_real, maps_fake, kind)
        torch.testing.assert_close(both, parts)
        expected = generator_loss(FAKE, kind) + generator_loss(maps_fake, kind)
        torch.testing.assert_close(loss([FAKE, maps_fake]), expected)
    with pytest.raises(ValueError, match="kind"):
        AdversarialLoss("wasserstein")
    with pytest.raises(ValueError, match="2 real and 1 fake"):
        discriminator_loss([REAL, REAL], FAKE)


def test_r1_of_a_linear_discriminator():
    # D(x) = <w, x> + b: grad_x D = w for every sample, so E||grad||^2 = ||w||^2
    w = torch.randn(3, 4, 4)
    real = torch.randn(5, 3, 4, 4, requires_grad=True)
    logits = (real * w).flatten(1).sum(1) + 0.3
    assert r1_penalty(logits, real).item() == pytest.approx(w.square().sum().item(), rel=1e-5)
    with pytest.raises(ValueError, match="requires_grad"):
        r1_penalty(logits, real.detach())


class TinyD(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1)
        self.head = nn.Conv2d(3, 1, 1)

    def forward(self, x):
        return self.head(torch.tanh(self.conv(x)))  # a per-pixel logit map


def test_r1_gradcheck_through_the_discriminator():
    torch.manual_seed(0)
    disc = TinyD().double()
    real = torch.randn(2, 2, 3, 3, dtype=torch.float64)
    params = dict(disc.named_parameters())

    def penalty(conv_w, head_w, x):  # x requires grad: the penalty's gradient w.r.t. D and the input
        out = torch.func.functional_call(disc, {**params, "conv.weight": conv_w, "head.weight": head_w}, (x,))
        return r1_penalty(out, x)

    inputs = (params["conv.weight"].detach().clone().requires_grad_(True),
              params["head.weight"].detach().clone().requires_grad_(True), real.clone().requires_grad_(True))
    assert torch.autograd.gradcheck(penalty, inputs, fast_mode=True)


def test_lazy_r1_cadence_and_scaling():
    torch.manual_seed(0)
    disc = TinyD()
    real = torch.randn(2, 2, 4, 4)
    x = real.clone().requires_grad_(True)
    plain = r1_penalty(disc(x), x).item()
    lazy = LazyR1(gamma=4.0, interval=3)
    values = []
    for _ in range(7):
        values.append(lazy(disc, real).item())
    # due on steps 0, 3, 6 with interval * gamma / 2 * penalty; zero (nothing run) otherwise
    expected = [3 * 2.0 * plain if i % 3 == 0 else 0.0 for i in range(7)]
    assert values == pytest.approx(expected, rel=1e-5)
    assert int(lazy.steps) == 7 and "steps" in lazy.state_dict()
    assert lazy.optimizer_ratio() == pytest.approx(3 / 4) and LazyR1(interval=1).optimizer_ratio() == 1.0
    # the penalty trains D: gradients reach its parameters
    disc.zero_grad()
    LazyR1(gamma=1.0, interval=1)(disc, real).backward()
    assert disc.conv.weight.grad is not None and disc.conv.weight.grad.abs().sum() > 0
    assert not LazyR1(gamma=0.0).due
    with pytest.raises(ValueError, match="interval"):
        LazyR1(interval=0)


def test_feature_matching_is_pix2pixhds_weighted_l1_of_the_intermediate_features():
    real = [[torch.zeros(1, 2, 4, 4), torch.zeros(1, 3, 2, 2), torch.full((1, 1, 1, 1), 9.0)],
            [torch.zeros(1, 2, 2, 2), torch.zeros(1, 3, 1, 1), torch.full((1, 1, 1, 1), -9.0)]]
    fake = [[torch.ones(1, 2, 4, 4), torch.full((1, 3, 2, 2), 2.0), torch.zeros(1, 1, 1, 1)],
            [torch.full((1, 2, 2, 2), 3.0), torch.zeros(1, 3, 1, 1), torch.zeros(1, 1, 1, 1)]]
    # 2 intermediate maps per scale: weight 4 / 2 each, 1 / 2 per scale; the logits do not count
    expected = (4 / 2) * (1 / 2) * ((1 + 2) + (3 + 0))
    assert float(feature_matching_loss(real, fake)) == pytest.approx(expected)
    fake = [[t.clone().requires_grad_(True) for t in f] for f in fake]
    real = [[t.clone().requires_grad_(True) for t in f] for f in real]
    feature_matching_loss(real, fake).backward()
    assert fake[0][0].grad is not None and real[0][0].grad is None  # the real features are targets
    with pytest.raises(ValueError, match="scales"):
        feature_matching_loss(real, fake[:1])
