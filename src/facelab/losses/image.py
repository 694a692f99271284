"""Pixel-space losses: masked photometric, total variation, horizontal-flip symmetry, Laplacian pyramid.

Shapes: ``B`` batch, ``C`` channels, ``H, W`` image size. Masks are (B, 1, H, W), (B, H, W) or (B, C, H, W), bool
or float in [0, 1] (soft visibility); every masked mean is taken over the masked pixels and is 0 (still attached
to the prediction) when a mask is empty.
"""

from __future__ import annotations

from collections.abc import Sequence

import kornia
import torch
from torch import Tensor, nn

from facelab.losses.base import Norm, elementwise_norm, masked_mean

__all__ = [
    "LaplacianPyramidLoss",
    "PhotometricLoss",
    "SymmetryLoss",
    "TotalVariation",
    "laplacian_pyramid_loss",
    "photometric_loss",
    "symmetry_loss",
    "total_variation",
]


def _check_images(pred: Tensor, target: Tensor) -> None:
    if pred.dim() != 4 or pred.shape != target.shape:
        raise ValueError(f"expected two (B, C, H, W) tensors of one shape, got {tuple(pred.shape)} and "
                         f"{tuple(target.shape)}")


def _mask4(mask: Tensor | None, like: Tensor) -> Tensor | None:
    """A mask as (B, 1|C, H, W) in ``like``'s dtype, or None."""
    if mask is None:
        return None
    mask = mask[:, None] if mask.dim() == 3 else mask
    b, c, h, w = like.shape
    if mask.dim() != 4 or mask.shape[0] != b or mask.shape[1] not in (1, c) or mask.shape[2:] != (h, w):
        raise ValueError(f"mask {tuple(mask.shape)} does not fit images {tuple(like.shape)}: expected (B, H, W), "
                         "(B, 1, H, W) or (B, C, H, W)")
    return mask.to(like.dtype)


def photometric_loss(pred: Tensor, target: Tensor, mask: Tensor | None = None, norm: Norm = "l1") -> Tensor:
    """Masked photometric error, ``sum_p m_p |pred_p - target_p|^q / sum_p m_p`` over pixels and channels.

    The analysis-by-synthesis image term of 3DMM fitting and reconstruction networks (e.g. Deep3DFaceRecon's
    skin-masked photometric loss, FaceDet3D's photometric loss); without a mask it is ``F.l1_loss`` / ``F.mse_loss``.

    Args:
        pred: (B, C, H, W) rendered or generated image. target: (B, C, H, W).
        mask: visibility (B, H, W), (B, 1, H, W) or (B, C, H, W), bool or soft weights; None: every pixel.
        norm: ``"l1"`` (``|d|``) or ``"l2"`` (``d^2``).

    Returns:
        Scalar; 0 when the mask is empty.
    """
    _check_images(pred, target)
    return masked_mean(elementwise_norm(pred - target.to(pred), norm), _mask4(mask, pred))


class PhotometricLoss(nn.Module):
    """Module form of :func:`photometric_loss`. Args: norm: ``"l1"`` or ``"l2"``."""

    def __init__(self, norm: Norm = "l1") -> None:
        super().__init__()
        self.norm = norm

    def forward(self, pred: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
        return photometric_loss(pred, target, mask, self.norm)


def total_variation(image: Tensor, norm: Norm = "l1") -> Tensor:
    """Anisotropic total variation, ``mean |d_y I| + mean |d_x I|`` (each term over its own count of neighbour
    pairs), averaged over batch and channels.

    ``"l1"`` is kornia's ``total_variation(reduction="mean")`` (Rudin, Osher & Fatemi 1992); ``"l2"`` squares the
    differences, GANimation's attention-mask smoothness (Pumarola et al. 2018, Eq. 5: ``sum (A_{i+1,j} - A_{i,j})^2
    + (A_{i,j+1} - A_{i,j})^2``, here as means).

    Args:
        image: (B, C, H, W) image, mask or map.
    """
    if image.dim() != 4:
        raise ValueError(f"expected (B, C, H, W), got {tuple(image.shape)}")
    if norm == "l1":
        return kornia.losses.total_variation(image, reduction="mean").mean()
    dy = image[..., 1:, :] - image[..., :-1, :]
    dx = image[..., :, 1:] - image[..., :, :-1]
    zero = image.new_zeros(())
    return (elementwise_norm(dy, norm).mean() if dy.numel() else zero) + \
        (elementwise_norm(dx, norm).mean() if dx.numel() else zero)


class TotalVariation(nn.Module):
    """Module form of :func:`total_variation`. Args: norm: ``"l1"`` or ``"l2"`` (squared differences)."""

    def __init__(self, norm: Norm = "l1") -> None:
        super().__init__()
        self.norm = norm

    def forward(self, image: Tensor) -> Tensor:
        return total_variation(image, self.norm)


def symmetry_loss(image: Tensor, mask: Tensor | None = None, norm: Norm = "l1",
                  negate_channels: Sequence[int] = ()) -> Tensor:
    """Symmetry under a horizontal flip, ``mean |A - F_h(A)|`` (DualStream Eq. 6 on the identity position map).

    For an image or a UV map whose layout is left-right symmetric about the vertical centre line (the FLAME, BFM
    and ICT UV layouts are). Where a channel changes sign under the mirror (the x coordinate of a position map
    centred on the face's symmetry plane), list it in ``negate_channels``: the flipped copy has it negated.

    Args:
        image: (B, C, H, W).
        mask: (B, H, W), (B, 1, H, W) or (B, C, H, W); only pixels valid *and* mirrored onto a valid pixel count
            (``m * F_h(m)``). None: every pixel.
        norm: ``"l1"`` or ``"l2"``.
        negate_channels: channel indices negated in the mirrored copy.

    Returns:
        Scalar; 0 when no pixel is valid.
    """
    if image.dim() != 4:
        raise ValueError(f"expected (B, C, H, W), got {tuple(image.shape)}")
    mirrored = image.flip(-1)
    if negate_channels:
        sign = torch.ones(image.shape[1], dtype=image.dtype, device=image.device)
        sign[list(negate_channels)] = -1.0
        mirrored = mirrored * sign.view(1, -1, 1, 1)
    mask = _mask4(mask, image)
    weight = None if mask is None else mask * mask.flip(-1)
    return masked_mean(elementwise_norm(image - mirrored, norm), weight)


class SymmetryLoss(nn.Module):
    """Module form of :func:`symmetry_loss`.

    Args:
        norm: ``"l1"`` or ``"l2"``. negate_channels: channels that change sign under the mirror.
    """

    def __init__(self, norm: Norm = "l1", negate_channels: Sequence[int] = ()) -> None:
        super().__init__()
        self.norm, self.negate_channels = norm, tuple(negate_channels)

    def forward(self, image: Tensor, mask: Tensor | None = None) -> Tensor:
        return symmetry_loss(image, mask, self.norm, self.negate_channels)


def laplacian_pyramid_loss(pred: Tensor, target: Tensor, levels: int = 5, mask: Tensor | None = None) -> Tensor:
    """Laplacian pyramid L1 (Ling & Okada 2006; Bojanowski et al. 2018, "Optimizing the latent space of
    generative networks", §3): ``Lap1(x, y) = sum_j 2^(-2j) |L^j(x) - L^j(y)|_1``.

    ``L^j`` is level ``j`` of the Laplacian pyramid (kornia's ``build_laplacian_pyramid``: band-pass levels
    ``0 .. levels-2`` and the low-pass residual as the last). Each ``|.|_1`` is the sum over a level's pixels; the
    total is divided by the element count ``C H W`` of level 0 and averaged over the batch, so the value does not
    grow with the image size while keeping the paper's relative weights. Sides not divisible by ``2^(levels-1)``
    are reflect-padded by kornia (identically for both images).

    Args:
        pred: (B, C, H, W). target: (B, C, H, W).
        levels: pyramid levels (>= 1; 1 is a plain L1).
        mask: optional (B, H, W) / (B, 1, H, W) / (B, C, H, W) region (e.g. FaceDet3D's skin region): both images
            are multiplied by it before the pyramid is built, so only the region's content (and its shared
            border) is compared.

    Returns:
        Scalar.
    """
    _check_images(pred, target)
    if levels < 1:
        raise ValueError(f"levels must be >= 1, got {levels}")
    smallest = 3 * 2 ** max(levels - 2, 0)  # the last blurred level needs a side of >= 3 (5 x 5 reflect padding)
    if min(pred.shape[-2:]) < smallest:
        raise ValueError(f"a {levels}-level Laplacian pyramid needs images of at least {smallest} x {smallest}, got "
                         f"{tuple(pred.shape[-2:])}: use fewer levels")
    target = target.to(pred)
    mask = _mask4(mask, pred)
    if mask is not None:
        pred, target = pred * mask, target * mask
    pyr_pred = kornia.geometry.transform.build_laplacian_pyramid(pred, levels)
    pyr_target = kornia.geometry.transform.build_laplacian_pyramid(target, levels)
    total = sum(4.0 ** -j * (a - b).abs().flatten(1).sum(1) for j, (a, b) in enumerate(zip(pyr_pred, pyr_target)))
    return (total / pred[0].numel()).mean()


class LaplacianPyramidLoss(nn.Module):
    """Module form of :func:`laplacian_pyramid_loss`. Args: levels: pyramid levels (5)."""

    def __init__(self, levels: int = 5) -> None:
        super().__init__()
        if levels < 1:
            raise ValueError(f"levels must be >= 1, got {levels}")
        self.levels = levels

    def forward(self, pred: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
        return laplacian_pyramid_loss(pred, target, self.levels, mask)
