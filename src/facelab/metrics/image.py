"""PSNR and SSIM of images and of float maps (displacement, depth, position maps), with a data range and a mask.

Both take an explicit ``data_range`` ``L``: the span of values the maps can take (1 for images in [0, 1], 255 for
uint8 levels, ``max - min`` of the dataset for a signed displacement map). Nothing is clamped: signed values and
values outside ``[0, L]`` are compared as they are. Results are per image (B,); the paper tables average them.

* PSNR ``= 10 log10(L^2 / MSE)`` with the MSE over the (masked) pixels and channels of each image; the same as
  ``torchmetrics.functional.peak_signal_noise_ratio(..., dim=(1, 2, 3), reduction="none")`` and scikit-image's
  ``peak_signal_noise_ratio`` without a mask.
* SSIM (Wang et al. 2004, Eq. 13): the per-pixel SSIM map of ``torchmetrics``' implementation (11x11 Gaussian
  window, sigma 1.5, K1 = 0.01, K2 = 0.03, ``C_i = (K_i L)^2``), averaged over channels and (masked) pixels.
  ``border="reflect"`` averages the whole map (torchmetrics: reflect-padded borders); ``border="crop"`` leaves out
  the 5-pixel band the window overhangs (scikit-image's ``structural_similarity(gaussian_weights=True,
  use_sample_covariance=False)``).

Shapes: ``B`` images, ``C`` channels, ``H, W`` pixels; masks (B, 1, H, W), (B, H, W) or (B, C, H, W), bool or
{0, 1}.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

__all__ = ["psnr", "ssim", "ssim_map"]


def _check_pair(pred: Tensor, target: Tensor, name: str) -> None:
    if pred.dim() != 4 or pred.shape != target.shape:
        raise ValueError(f"{name}: pred {tuple(pred.shape)} and target {tuple(target.shape)} must be the same "
                         "(B, C, H, W)")


def _check_range(data_range: float, name: str) -> float:
    try:
        span = float(data_range)
    except (TypeError, ValueError):
        span = float("nan")
    if not (math.isfinite(span) and span > 0):
        raise ValueError(f"{name}: data_range must be a positive number (the span of the values), got {data_range!r}")
    return span


def _mask_weight(mask: Tensor | None, like: Tensor) -> Tensor | None:
    """The mask as a float weight broadcastable to ``like`` (B, C, H, W)."""
    if mask is None:
        return None
    if mask.dim() == 3:
        mask = mask[:, None]
    b, c, h, w = like.shape
    if mask.dim() != 4 or mask.shape[0] != b or mask.shape[1] not in (1, c) or mask.shape[2:] != (h, w):
        raise ValueError(f"mask {tuple(mask.shape)} does not fit images {tuple(like.shape)}: expected (B, H, W), "
                         "(B, 1, H, W) or (B, C, H, W)")
    return mask.to(like.dtype).expand_as(like)


def _masked_image_mean(values: Tensor, weight: Tensor | None) -> Tensor:
    """(B,) mean of (B, C, H, W) ``values`` over C, H, W (weighted by ``weight``; NaN for an empty mask)."""
    if weight is None:
        return values.flatten(1).mean(dim=1)
    return (values * weight).flatten(1).sum(dim=1) / weight.flatten(1).sum(dim=1)


def psnr(pred: Tensor, target: Tensor, *, data_range: float, mask: Tensor | None = None) -> Tensor:
    """(B,) peak signal-to-noise ratio ``10 log10(data_range^2 / MSE)`` in dB per image (module docstring).

    Args:
        pred, target: (B, C, H, W) images or float maps.
        data_range: the span ``L`` of the values (required: signed maps have no natural default).
        mask: the pixels that count (None: all). Identical images give ``inf``; an empty mask NaN.
    """
    _check_pair(pred, target, "psnr")
    peak = _check_range(data_range, "psnr")
    mse = _masked_image_mean((pred - target.to(pred)).square(), _mask_weight(mask, pred))
    return 10.0 * torch.log10(peak**2 / mse)


def ssim_map(pred: Tensor, target: Tensor, *, data_range: float, sigma: float = 1.5, k1: float = 0.01,
             k2: float = 0.03) -> Tensor:
    """(B, C, H, W) per-pixel SSIM (torchmetrics' Gaussian-window implementation, reflect-padded borders).

    Args:
        pred, target: (B, C, H, W), at least 11x11 pixels (the window).
        data_range: the span ``L`` of the values. sigma: the Gaussian window's std (window ``2*int(3.5 sigma + .5)+1``).
        k1, k2: the stabilizing constants' factors.
    """
    from torchmetrics.functional.image import structural_similarity_index_measure  # torchmetrics imports in ~1 s

    _check_pair(pred, target, "ssim")
    span = _check_range(data_range, "ssim")
    half = int(3.5 * sigma + 0.5)
    if min(pred.shape[-2:]) <= 2 * half:
        raise ValueError(f"ssim needs maps larger than the {2 * half + 1}x{2 * half + 1} window, got "
                         f"{tuple(pred.shape[-2:])}")
    _, full = structural_similarity_index_measure(pred, target.to(pred), gaussian_kernel=True, sigma=sigma,
                                                  data_range=span, k1=k1, k2=k2, reduction="none",
                                                  return_full_image=True)
    return full


def ssim(pred: Tensor, target: Tensor, *, data_range: float, mask: Tensor | None = None,
         border: Literal["reflect", "crop"] = "reflect", sigma: float = 1.5) -> Tensor:
    """(B,) mean structural similarity per image (module docstring), optionally over a mask.

    Args:
        pred, target: (B, C, H, W) images or float maps.
        data_range: the span ``L`` of the values.
        mask: the pixels that count (None: all); with ``border="crop"`` the band is left out as well.
        border: ``"reflect"`` (torchmetrics' mean over the whole map) or ``"crop"`` (scikit-image's: the
            ``int(3.5 sigma + 0.5)``-pixel border band left out).
        sigma: the Gaussian window's std.
    """
    full = ssim_map(pred, target, data_range=data_range, sigma=sigma)
    weight = _mask_weight(mask, full)
    if border == "crop":
        pad = int(3.5 * sigma + 0.5)
        full = full[..., pad:-pad, pad:-pad]
        weight = weight[..., pad:-pad, pad:-pad] if weight is not None else None
    elif border != "reflect":
        raise ValueError(f"border must be 'reflect' or 'crop', got {border!r}")
    return _masked_image_mean(full, weight)
