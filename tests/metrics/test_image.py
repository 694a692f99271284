"""PSNR and SSIM against torchmetrics and scikit-image on the same images and signed displacement maps."""

from __future__ import annotations

import math

import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio as sk_psnr
from skimage.metrics import structural_similarity as sk_ssim
from torchmetrics.functional.image import peak_signal_noise_ratio as tm_psnr
from torchmetrics.functional.image import structural_similarity_index_measure as tm_ssim

from facelab.metrics import psnr, ssim, ssim_map


def _images(seed: int = 0, channels: int = 3, signed: bool = False) -> tuple[torch.Tensor, torch.Tensor, float]:
    """A (2, C, 40, 48) smooth target and a noisy prediction; signed maps in about [-3, 3] (a displacement map)."""
    g = torch.Generator().manual_seed(seed)
    target = torch.nn.functional.avg_pool2d(torch.rand(2, channels, 44, 52, generator=g, dtype=torch.float64), 5, 1)
    if signed:
        target = 6.0 * target - 3.0
    span = 6.0 if signed else 1.0
    pred = target + 0.05 * span * torch.randn(target.shape, generator=g, dtype=torch.float64)
    return pred, target, span


@pytest.mark.parametrize("signed", [False, True])
def test_psnr_matches_torchmetrics_and_skimage(signed):
    pred, target, span = _images(signed=signed)
    ours = psnr(pred, target, data_range=span)
    assert ours.shape == (2,)
    theirs = tm_psnr(pred, target, data_range=span, reduction="none", dim=(1, 2, 3))
    assert torch.allclose(ours, theirs, atol=1e-4)
    for i in range(2):
        assert float(ours[i]) == pytest.approx(sk_psnr(target[i].numpy(), pred[i].numpy(), data_range=span), abs=1e-4)


def test_psnr_mask_is_the_psnr_of_the_masked_pixels():
    pred, target, span = _images()
    mask = torch.zeros(2, 1, 40, 48, dtype=torch.bool)
    mask[:, :, 5:30, 10:40] = True
    pred = pred.clone()
    pred[:, :, 0] = 99.0  # outside the mask: must not count
    ours = psnr(pred, target, data_range=span, mask=mask)
    for i in range(2):
        d = (pred[i] - target[i])[:, 5:30, 10:40]
        assert float(ours[i]) == pytest.approx(10 * math.log10(1.0 / float(d.square().mean())), abs=1e-9)
    # a (B, H, W) mask and a float one say the same
    assert torch.allclose(psnr(pred, target, data_range=span, mask=mask[:, 0].float()), ours)


def test_psnr_of_identical_images_is_infinite_and_bad_input_is_refused():
    x = torch.rand(1, 1, 16, 16)
    assert math.isinf(float(psnr(x, x.clone(), data_range=1.0)[0]))
    with pytest.raises(ValueError, match="data_range"):
        psnr(x, x, data_range=0.0)
    with pytest.raises(ValueError, match="same"):
        psnr(x, x[..., :8], data_range=1.0)
    with pytest.raises(ValueError, match="mask"):
        psnr(x, x, data_range=1.0, mask=torch.ones(1, 1, 8, 8))


@pytest.mark.parametrize("signed", [False, True])
def test_ssim_matches_torchmetrics(signed):
    pred, target, span = _images(seed=1, signed=signed)
    ours = ssim(pred, target, data_range=span)
    theirs = tm_ssim(pred, target, data_range=span, reduction="none")
    assert ours.shape == (2,)
    assert torch.allclose(ours, theirs, atol=1e-4)
    assert 0.2 < float(ours.min()) < 0.99  # a real, non-trivial comparison


@pytest.mark.parametrize("signed", [False, True])
def test_ssim_cropped_border_matches_skimage(signed):
    pred, target, span = _images(seed=2, signed=signed)
    ours = ssim(pred, target, data_range=span, border="crop")
    for i in range(2):
        ref = sk_ssim(target[i].numpy(), pred[i].numpy(), data_range=span, gaussian_weights=True, sigma=1.5,
                      use_sample_covariance=False, channel_axis=0)
        assert float(ours[i]) == pytest.approx(ref, abs=1e-4)
    # the reflect-padded border band makes the two conventions differ measurably
    assert not torch.allclose(ours, ssim(pred, target, data_range=span), atol=1e-4)


def test_ssim_of_a_single_channel_displacement_map_matches_skimage():
    pred, target, span = _images(seed=3, channels=1, signed=True)
    ours = ssim(pred, target, data_range=span, border="crop")
    ref = sk_ssim(target[0, 0].numpy(), pred[0, 0].numpy(), data_range=span, gaussian_weights=True, sigma=1.5,
                  use_sample_covariance=False)
    assert float(ours[0]) == pytest.approx(ref, abs=1e-4)


def test_ssim_mask_averages_the_map_over_the_mask():
    pred, target, span = _images(seed=4)
    full = ssim_map(pred, target, data_range=span)
    mask = torch.rand(2, 1, 40, 48, generator=torch.Generator().manual_seed(0)) > 0.5
    ours = ssim(pred, target, data_range=span, mask=mask)
    m = mask.expand_as(full).numpy()
    for i in range(2):
        assert float(ours[i]) == pytest.approx(float(full[i].numpy()[m[i]].mean()), abs=1e-12)
    assert torch.allclose(ssim(pred, target, data_range=span, mask=torch.ones(2, 40, 48)),
                          ssim(pred, target, data_range=span))


def test_ssim_is_one_for_identical_maps_and_refuses_tiny_maps():
    x = torch.rand(1, 3, 16, 16, dtype=torch.float64)
    assert float(ssim(x, x.clone(), data_range=1.0)[0]) == pytest.approx(1.0, abs=1e-12)
    with pytest.raises(ValueError, match="window"):
        ssim(x[..., :8, :8], x[..., :8, :8], data_range=1.0)
    with pytest.raises(ValueError, match="border"):
        ssim(x, x, data_range=1.0, border="same")


def test_signed_maps_are_not_clamped():
    """PSNR of a signed map is shift-invariant (nothing is clipped to [0, data_range]); clamping changes SSIM."""
    pred, target, span = _images(seed=5, signed=True)
    assert torch.allclose(psnr(pred, target, data_range=span), psnr(pred + 10.0, target + 10.0, data_range=span))
    clamped = ssim(pred.clamp(0, span), target.clamp(0, span), data_range=span)
    assert not torch.allclose(ssim(pred, target, data_range=span), clamped, atol=1e-3)
