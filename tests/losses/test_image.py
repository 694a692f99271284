"""Photometric, total variation, symmetry and Laplacian pyramid losses against hand-computed values and kornia."""

from __future__ import annotations

import kornia
import pytest
import torch

from facelab.losses import (
    LaplacianPyramidLoss,
    PhotometricLoss,
    SymmetryLoss,
    TotalVariation,
    laplacian_pyramid_loss,
    photometric_loss,
    symmetry_loss,
    total_variation,
)


def test_photometric_loss_masked_mean():
    pred = torch.zeros(1, 2, 2, 2, requires_grad=True)
    target = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[-1.0, 0.0], [0.0, 0.0]]]])
    assert photometric_loss(pred, target).item() == pytest.approx(11 / 8)
    assert PhotometricLoss("l2")(pred, target).item() == pytest.approx(31 / 8)
    mask = torch.tensor([[[True, False], [False, True]]])  # (B, H, W): pixels (0,0) and (1,1), both channels
    assert photometric_loss(pred, target, mask).item() == pytest.approx((1 + 4 + 1 + 0) / 4)
    soft = torch.tensor([[[[0.5, 0.0], [0.0, 0.0]]]])  # (B, 1, H, W) soft visibility
    assert photometric_loss(pred, target, soft, norm="l2").item() == pytest.approx(0.5 * (1 + 1) / (0.5 * 2))
    per_channel = torch.zeros(1, 2, 2, 2)
    per_channel[0, 1, 0, 0] = 1.0  # only channel 1 of pixel (0, 0)
    assert photometric_loss(pred, target, per_channel).item() == pytest.approx(1.0)
    empty = photometric_loss(pred, target, torch.zeros(1, 2, 2, dtype=torch.bool))
    assert empty.item() == 0.0
    empty.backward()
    assert torch.isfinite(pred.grad).all()
    with pytest.raises(ValueError, match="mask"):
        photometric_loss(pred, target, torch.ones(1, 3, 2, 2))


def test_total_variation_l1_is_kornia_and_l2_by_hand():
    image = torch.tensor([[[[0.0, 1.0, 3.0], [2.0, 2.0, 2.0]]]])
    # vertical: |2-0|, |2-1|, |2-3| -> mean 4/3; horizontal: 1, 2, 0, 0 -> mean 3/4
    assert total_variation(image).item() == pytest.approx(4 / 3 + 3 / 4)
    assert TotalVariation("l2")(image).item() == pytest.approx((4 + 1 + 1) / 3 + (1 + 4) / 4)
    x = torch.rand(2, 3, 5, 7)
    torch.testing.assert_close(total_variation(x), kornia.losses.total_variation(x, reduction="mean").mean())


def test_symmetry_loss():
    image = torch.tensor([[[[1.0, 2.0, 5.0]], [[1.0, 0.0, -1.0]]]])  # (1, 2, 1, 3)
    # channel 0: |1-5|, 0, |5-1|; channel 1: |1+1|, 0, 2 -> mean 12/6
    assert symmetry_loss(image).item() == pytest.approx(12 / 6)
    # channel 1 is an x coordinate about the symmetry plane: mirrored it changes sign, and this map is symmetric
    assert SymmetryLoss(negate_channels=(1,))(image).item() == pytest.approx(8 / 6)
    assert symmetry_loss(image[:, 1:], negate_channels=(0,)).item() == 0.0
    mask = torch.tensor([[[1.0, 1.0, 0.0]]])  # pixel 2 invalid: its mirror pair (0, 2) drops out
    assert symmetry_loss(image, mask).item() == 0.0
    symmetric = torch.rand(1, 3, 4, 3)
    symmetric = symmetric + symmetric.flip(-1)
    assert symmetry_loss(symmetric).item() == pytest.approx(0.0, abs=1e-7)


def _pyramid_by_hand(x: torch.Tensor, levels: int) -> list[torch.Tensor]:
    """Gaussian pyramid with kornia's pyrdown / pyrup; band-pass levels and the low-pass residual."""
    gauss = [x]
    for _ in range(levels - 1):
        gauss.append(kornia.geometry.transform.pyrdown(gauss[-1]))
    bands = [g - kornia.geometry.transform.pyrup(n) for g, n in zip(gauss[:-1], gauss[1:])]
    return bands + [gauss[-1]]


def test_laplacian_pyramid_loss_by_hand():
    torch.manual_seed(0)
    x, y = torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 16)
    levels = 3
    expected = sum(4.0 ** -j * (a - b).abs().flatten(1).sum(1)
                   for j, (a, b) in enumerate(zip(_pyramid_by_hand(x, levels), _pyramid_by_hand(y, levels))))
    expected = (expected / (3 * 16 * 16)).mean()
    torch.testing.assert_close(laplacian_pyramid_loss(x, y, levels), expected)
    # one level is the plain L1; equal images give 0; a constant offset only reaches the low-pass level
    torch.testing.assert_close(LaplacianPyramidLoss(1)(x, y), (x - y).abs().mean())
    assert laplacian_pyramid_loss(x, x, 4).item() == 0.0
    with pytest.raises(ValueError, match="at least 24 x 24"):
        laplacian_pyramid_loss(x, y, 5)
    offset = laplacian_pyramid_loss(x + 0.5, x, levels)
    assert offset.item() == pytest.approx(4.0 ** -(levels - 1) * 0.5 * (4 * 4) / (16 * 16), rel=1e-4)
    # a mask compares only the region
    mask = torch.zeros(2, 1, 16, 16)
    mask[..., 4:12, 4:12] = 1
    assert laplacian_pyramid_loss(x, torch.where(mask.bool(), x, y), levels, mask).item() == 0.0
    with pytest.raises(ValueError, match="levels"):
        LaplacianPyramidLoss(0)


def test_laplacian_pyramid_gradcheck():
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(1, 1, 6, 6, dtype=torch.float64, generator=gen, requires_grad=True)
    y = torch.rand(1, 1, 6, 6, dtype=torch.float64, generator=gen)
    assert torch.autograd.gradcheck(lambda a: laplacian_pyramid_loss(a, y, 2), (x,), fast_mode=True)
