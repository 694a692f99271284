"""Energy terms: per-face values equal the core losses / hand-computed values; IRLS weights are rho'; SH is exact."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from facelab.fitting import (
    gaussian_prior,
    landmark_energy,
    photometric_energy,
    robust_penalty,
    sh_least_squares,
    sh_monochrome_prior,
)
from facelab.losses.geometry import landmark_loss
from facelab.losses.image import photometric_loss
from facelab.render.shading import sh_shading

PENALTIES = {
    "l2": lambda s, c: s,
    "cauchy": lambda s, c: c * c * torch.log1p(s / (c * c)),
    "geman_mcclure": lambda s, c: c * c * s / (c * c + s),
    "huber": lambda s, c: torch.where(s.sqrt() <= c, s, 2 * c * s.sqrt() - c * c),
}


@pytest.mark.parametrize("kind", sorted(PENALTIES))
def test_robust_penalties(kind):
    sq = torch.tensor([0.01, 0.5, 4.0, 30.0, 200.0], dtype=torch.float64)
    torch.testing.assert_close(robust_penalty(sq, kind, 5.0), PENALTIES[kind](sq, 5.0))
    small = torch.tensor([1e-4], dtype=torch.float64)  # all agree with r^2 for small residuals
    torch.testing.assert_close(robust_penalty(small, kind, 5.0), small, rtol=1e-5, atol=0)
    if kind != "l2":  # and grow more slowly than r^2 for large ones
        assert robust_penalty(torch.tensor([400.0]), kind, 5.0) < 0.5 * 400.0


def test_robust_penalty_rejects_unknown_kind():
    with pytest.raises(ValueError, match="cauchy"):
        robust_penalty(torch.ones(3), "tukey")


def test_landmark_energy_is_the_core_landmark_loss_per_face():
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(3, 68, 2, generator=g), torch.randn(3, 68, 2, generator=g)
    weights = torch.rand(3, 68, generator=g)
    unit = torch.tensor([0.5, 1.0, 2.0])
    energy = landmark_energy(pred, target, weights, unit, kind="l2")
    for i in range(3):  # l2: facelab.losses.landmark_loss of that face in face units
        u = unit[i]
        torch.testing.assert_close(energy[i], landmark_loss(pred[i:i + 1] / u, target[i:i + 1] / u, weights[i:i + 1]))
    # robust: a gross outlier changes its face's energy far less than under l2; other faces are independent
    target[0, 0] += 100.0
    robust = landmark_energy(pred, target, weights, unit, kind="cauchy", scale=5.0)
    plain = landmark_energy(pred, target, weights, unit, kind="l2")
    assert robust[0] < 0.05 * plain[0]
    alone = landmark_energy(pred[1:2], target[1:2], weights[1:2], unit[1:2], kind="cauchy", scale=5.0)
    torch.testing.assert_close(robust[1:2], alone)


def test_photometric_energy_is_the_core_loss_per_face():
    g = torch.Generator().manual_seed(1)
    render, image = torch.rand(3, 3, 16, 16, generator=g), torch.rand(3, 3, 16, 16, generator=g)
    mask = (torch.rand(3, 1, 16, 16, generator=g) > 0.4).float()
    mask[2] = 0.0
    energy = photometric_energy(render, image, mask)
    for i in range(2):
        torch.testing.assert_close(energy[i], photometric_loss(render[i:i + 1], image[i:i + 1], mask[i:i + 1]))
    assert energy[2] == 0.0


def test_priors():
    coeffs = torch.tensor([[1.0, -2.0, 0.5], [0.0, 0.0, 0.0]])
    torch.testing.assert_close(gaussian_prior(coeffs), torch.tensor([5.25, 0.0]))
    grey = torch.randn(1, 9).repeat(1, 3)  # the same 9 coefficients for R, G and B
    assert sh_monochrome_prior(grey).item() == pytest.approx(0.0, abs=1e-10)
    coloured = grey.clone()
    coloured[0, 0] += 0.3  # red DC only: deviations 0.2, -0.1, -0.1 from the mean
    assert sh_monochrome_prior(coloured).item() == pytest.approx(0.2 ** 2 + 2 * 0.1 ** 2, rel=1e-5)


def test_sh_least_squares_recovers_the_lighting_of_a_sphere():
    h = w = 48
    y, x = torch.meshgrid(torch.linspace(-0.95, 0.95, h, dtype=torch.float64),
                          torch.linspace(-0.95, 0.95, w, dtype=torch.float64), indexing="ij")
    inside = (x ** 2 + y ** 2) < 0.9
    z = torch.sqrt((1 - x ** 2 - y ** 2).clamp(min=1e-6))
    normals = F.normalize(torch.stack([x, -y, z]), dim=0)[None]  # (1, 3, H, W), +y up
    g = torch.Generator().manual_seed(2)
    sh = torch.randn(1, 27, generator=g, dtype=torch.float64) * 0.2
    sh[0, [0, 9, 18]] += 0.9
    albedo = (0.4 + 0.4 * torch.rand(1, 3, h, w, generator=g, dtype=torch.float64))
    shading = sh_shading(normals.permute(0, 2, 3, 1), sh[:, None, None]).permute(0, 3, 1, 2)
    image = albedo * shading
    mask = inside[None, None].double()
    solved = sh_least_squares(normals, albedo, image, mask, ridge=0.0)
    torch.testing.assert_close(solved, sh, atol=1e-8, rtol=0)
    assert math.isfinite(float(sh_least_squares(normals, albedo, image, torch.zeros_like(mask)).sum()))
