"""Adaptive discriminator augmentation (Karras et al. 2020, "Training Generative Adversarial Networks with Limited
Data", NeurIPS; "ADA") for float maps of any channel count, e.g. displacement maps in UV.

Every image the discriminator sees (real and generated, the same pipeline, differentiable so G trains through it)
is augmented with probability ``p`` per transform and sample (ADA §2.2-2.3: with ``p`` < ~0.8 the augmentations
do not leak into the generated distribution). ``p`` is adapted from the overfitting heuristic (ADA Eq. 1, §3)
``r_t = E[sign(D_train)]`` on the real images: every ``interval`` D steps ``p`` moves by
``sign(r_t - target) * N / (ada_kimg * 1000)`` for the ``N`` real images seen, so it can go from 0 to 1 in
``ada_kimg`` (500) kimg.

The transforms, each a switch (a probability multiplier: 0 off, 1 on) because not all of ADA's fit displacement
maps (UV maps of one face layout, in length units, neutral = 0):

==============  =====  ===============================================================================================
transform       on?    for displacement maps
==============  =====  ===============================================================================================
``xflip``       1      mirror x: UV faces are near-symmetric, a flipped map is a plausible face.
``rotate90``    0      quarter turns: a rotated UV layout is never a face (wasted capacity); off.
``xint``        1      integer translation (up to 1/8 of the size): exact, no resampling.
``scale``       1      isotropic scaling, lognormal std 0.2 log2 (wrinkle widths vary between people).
``rotate``      1      small rotation, uniform within ``rotate_max_deg`` (15 deg here; ADA's full turn makes no face).
``aniso``       1      anisotropic scaling, lognormal std 0.2 log2.
``xfrac``       1      fractional translation, normal std 1/8 of the size.
``brightness``  1      additive offset N(0, 0.2) in data units (a shift of the neutral surface).
``contrast``    1      amplitude scaling about 0 (the neutral), lognormal std 0.5 log2 (deeper / shallower detail).
``noise``       0      additive Gaussian noise, std \\|N(0, 0.1)\\| (pore-like grain); optional.
``cutout``      0      a square of half the size set to 0 (neutral); optional (DiffAugment's cutout).
==============  =====  ===============================================================================================

The geometric transforms are composed into one matrix per sample and applied with a single ``grid_sample``
(bilinear, reflection padding; NVlabs pads and filters with wavelets instead; bilinear is exact at the integer
steps of xflip, rotate90 and xint). RGB colour transforms (luma flip, hue, saturation) have no meaning here and
are not provided. Offsets and noise are in the data's units: scale them to the data (e.g. with maps normalised to
unit std, the defaults are ADA's).

Shapes: ``B`` batch, ``C`` channels, ``H, W`` size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["AdaptiveAugment", "AugmentSettings", "augment", "augment_matrices"]


@dataclass(frozen=True)
class AugmentSettings:
    """Per-transform probability multipliers (0 = off) and strengths (see the module table)."""

    xflip: float = 1.0
    rotate90: float = 0.0
    xint: float = 1.0
    scale: float = 1.0
    rotate: float = 1.0
    aniso: float = 1.0
    xfrac: float = 1.0
    brightness: float = 1.0
    contrast: float = 1.0
    noise: float = 0.0
    cutout: float = 0.0
    xint_max: float = 0.125
    scale_std: float = 0.2
    rotate_max_deg: float = 15.0
    aniso_std: float = 0.2
    xfrac_std: float = 0.125
    brightness_std: float = 0.2
    contrast_std: float = 0.5
    noise_std: float = 0.1
    cutout_size: float = 0.5

    @property
    def geometric(self) -> bool:
        return any(getattr(self, k) > 0 for k in ("xflip", "rotate90", "xint", "scale", "rotate", "aniso", "xfrac"))


def _eye(b: int, device, dtype) -> Tensor:
    return torch.eye(3, device=device, dtype=dtype).expand(b, 3, 3).clone()


def _where(mask: Tensor, m: Tensor, eye: Tensor) -> Tensor:
    return torch.where(mask[:, None, None], m, eye)


def _scale2d(sx: Tensor, sy: Tensor) -> Tensor:
    m = _eye(sx.shape[0], sx.device, sx.dtype)
    m[:, 0, 0], m[:, 1, 1] = sx, sy
    return m


def _translate2d(tx: Tensor, ty: Tensor) -> Tensor:
    m = _eye(tx.shape[0], tx.device, tx.dtype)
    m[:, 0, 2], m[:, 1, 2] = tx, ty
    return m


def _rotate2d(theta: Tensor) -> Tensor:
    m = _eye(theta.shape[0], theta.device, theta.dtype)
    c, s = theta.cos(), theta.sin()
    m[:, 0, 0], m[:, 0, 1], m[:, 1, 0], m[:, 1, 1] = c, -s, s, c
    return m


def augment_matrices(b: int, size: tuple[int, int], p: Tensor | float, settings: AugmentSettings,
                     device=None, dtype=torch.float32) -> Tensor:
    """Per-sample 3x3 maps from output to input coordinates (normalised, ``align_corners=False``) of the
    geometric transforms, each applied with probability ``p * multiplier`` (ADA Appendix B.1 order).

    Args:
        b: batch size.
        size: (H, W) of the images (integer translations snap to their pixels).
        p: augmentation probability (scalar tensor or float).

    Returns:
        (B, 3, 3).
    """
    h, w = size
    eye = _eye(b, device, dtype)
    m = eye.clone()

    def active(mult: float) -> Tensor:
        return torch.rand(b, device=device) < p * mult

    if settings.xflip > 0:  # mirror x half the time when active
        flip = active(settings.xflip) & (torch.rand(b, device=device) < 0.5)
        m = m @ _where(flip, _scale2d(torch.full((b,), -1.0, device=device, dtype=dtype),
                                      torch.ones(b, device=device, dtype=dtype)), eye)
    if settings.rotate90 > 0:
        quarter = torch.randint(0, 4, (b,), device=device).to(dtype) * (math.pi / 2)
        m = m @ _where(active(settings.rotate90), _rotate2d(quarter), eye)
    if settings.xint > 0:  # whole pixels: 2 t / size in normalised coordinates
        t = (torch.rand(b, 2, device=device, dtype=dtype) * 2 - 1) * settings.xint_max
        tx, ty = (t[:, 0] * w).round() * 2 / w, (t[:, 1] * h).round() * 2 / h
        m = m @ _where(active(settings.xint), _translate2d(tx, ty), eye)
    if settings.scale > 0:
        s = torch.exp2(torch.randn(b, device=device, dtype=dtype) * settings.scale_std)
        m = m @ _where(active(settings.scale), _scale2d(s, s), eye)
    if settings.rotate > 0:
        theta = (torch.rand(b, device=device, dtype=dtype) * 2 - 1) * math.radians(settings.rotate_max_deg)
        m = m @ _where(active(settings.rotate), _rotate2d(theta), eye)
    if settings.aniso > 0:
        s = torch.exp2(torch.randn(b, device=device, dtype=dtype) * settings.aniso_std)
        m = m @ _where(active(settings.aniso), _scale2d(s, 1 / s), eye)
    if settings.xfrac > 0:
        t = torch.randn(b, 2, device=device, dtype=dtype) * settings.xfrac_std * 2
        m = m @ _where(active(settings.xfrac), _translate2d(t[:, 0], t[:, 1]), eye)
    return m


def augment(x: Tensor, p: Tensor | float, settings: AugmentSettings = AugmentSettings()) -> Tensor:
    """Apply the augmentation pipeline with probability ``p`` (differentiable in ``x``).

    Args:
        x: (B, C, H, W) float maps.
        p: probability in [0, 1] (scalar tensor or float).
        settings: which transforms and how strong.

    Returns:
        (B, C, H, W).
    """
    if x.dim() != 4:
        raise ValueError(f"augment expects (B, C, H, W), got {tuple(x.shape)}")
    b, _, h, w = x.shape
    if settings.rotate90 > 0 and h != w:
        raise ValueError(f"rotate90 needs square maps, got {h}x{w}")
    if not isinstance(p, Tensor) and p <= 0:
        return x
    dev, dt = x.device, x.dtype
    if settings.geometric:
        m = augment_matrices(b, (h, w), p, settings, dev, dt)
        grid = F.affine_grid(m[:, :2], list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)

    def active(mult: float) -> Tensor:
        return (torch.rand(b, 1, 1, 1, device=dev) < p * mult).to(dt)

    if settings.brightness > 0:
        x = x + torch.randn(b, 1, 1, 1, device=dev, dtype=dt) * settings.brightness_std * active(settings.brightness)
    if settings.contrast > 0:
        gain = torch.exp2(torch.randn(b, 1, 1, 1, device=dev, dtype=dt) * settings.contrast_std)
        x = x * torch.lerp(torch.ones_like(gain), gain, active(settings.contrast))
    if settings.noise > 0:
        sigma = torch.randn(b, 1, 1, 1, device=dev, dtype=dt).abs() * settings.noise_std * active(settings.noise)
        x = x + torch.randn_like(x) * sigma
    if settings.cutout > 0:
        centre = torch.rand(b, 2, 1, 1, device=dev, dtype=dt)
        yy = (torch.arange(h, device=dev, dtype=dt) + 0.5)[None, :, None] / h
        xx = (torch.arange(w, device=dev, dtype=dt) + 0.5)[None, None, :] / w
        inside = (((xx - centre[:, 0]).abs() < settings.cutout_size / 2)
                  & ((yy - centre[:, 1]).abs() < settings.cutout_size / 2))[:, None]
        x = x * (1 - inside.to(dt) * active(settings.cutout))
    return x


class AdaptiveAugment(nn.Module):
    """ADA: the augmentation pipeline with an adaptive (or fixed) probability ``p``.

    Use: ``D(ada(real))`` / ``D(ada(fake))`` for every discriminator input (also in the R1 pass), and
    ``ada.update(real_logits)`` on every D step with the logits of the augmented reals. Under torch.distributed
    the sign statistics are summed over ranks, so every rank keeps the same ``p``.

    Args:
        p: initial probability (0; the fixed probability when ``target`` is None).
        target: ``r_t`` target (0.6), or None for a fixed ``p``.
        ada_kimg: kimg for ``p`` to go 0 -> 1 at full speed (500).
        interval: D steps between adjustments (4).
        xflip, rotate90, xint, scale, rotate, aniso, xfrac, brightness, contrast, noise, cutout: probability
            multipliers of the transforms (module docstring; 0 switches one off).
        rotate_max_deg: the largest rotation.
        brightness_std: the additive offset's std, in data units.
        contrast_std: the amplitude scaling's log2 std.
        noise_std: the additive noise's std scale, in data units.

    Shapes:
        ``forward(x (B, C, H, W)) -> (B, C, H, W)``; ``update(real_logits (B,) or (B, ...))``.
    """

    p: Tensor
    rt: Tensor

    def __init__(self, p: float = 0.0, target: float | None = 0.6, ada_kimg: float = 500.0, interval: int = 4,
                 xflip: float = 1.0, rotate90: float = 0.0, xint: float = 1.0, scale: float = 1.0,
                 rotate: float = 1.0, aniso: float = 1.0, xfrac: float = 1.0, brightness: float = 1.0,
                 contrast: float = 1.0, noise: float = 0.0, cutout: float = 0.0, rotate_max_deg: float = 15.0,
                 brightness_std: float = 0.2, contrast_std: float = 0.5, noise_std: float = 0.1) -> None:
        super().__init__()
        if not 0 <= p <= 1 or interval < 1 or ada_kimg <= 0:
            raise ValueError(f"need 0 <= p <= 1, interval >= 1 and ada_kimg > 0; got {p}, {interval}, {ada_kimg}")
        self.target, self.ada_kimg, self.interval = target, ada_kimg, interval
        self.settings = AugmentSettings(xflip=xflip, rotate90=rotate90, xint=xint, scale=scale, rotate=rotate,
                                        aniso=aniso, xfrac=xfrac, brightness=brightness, contrast=contrast,
                                        noise=noise, cutout=cutout, rotate_max_deg=rotate_max_deg,
                                        brightness_std=brightness_std, contrast_std=contrast_std, noise_std=noise_std)
        self.register_buffer("p", torch.tensor(float(p)))
        self.register_buffer("rt", torch.tensor(float("nan")))  # the last measured E[sign(D(real))]
        self.register_buffer("_sign_sum", torch.zeros((), dtype=torch.float64), persistent=False)
        self.register_buffer("_count", torch.zeros((), dtype=torch.float64), persistent=False)
        self._steps = 0

    def forward(self, x: Tensor) -> Tensor:
        return augment(x, self.p, self.settings)

    @torch.no_grad()
    def update(self, real_logits: Tensor) -> None:
        """Accumulate ``sign(D(real))``; every ``interval`` calls adjust ``p`` (ADA §3) and record ``rt``.

        Args:
            real_logits: the discriminator's logits of the (augmented) real images, one per image (B,) or any shape
                whose first dimension is the batch (a per-image mean is taken).
        """
        if self.target is None:
            return
        logits = real_logits.detach().reshape(real_logits.shape[0], -1).mean(dim=1)
        self._sign_sum += logits.sign().sum().to(torch.float64)
        self._count += logits.shape[0]
        self._steps += 1
        if self._steps % self.interval:
            return
        stats = torch.stack([self._sign_sum, self._count])
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(stats)
        rt = stats[0] / stats[1].clamp(min=1)
        adjust = torch.sign(rt - self.target) * stats[1] / (self.ada_kimg * 1000)  # ADA §3
        self.p.copy_((self.p + adjust.to(self.p.dtype)).clamp(0.0, 1.0))
        self.rt.copy_(rt.to(self.rt.dtype))
        self._sign_sum.zero_()
        self._count.zero_()

    def extra_repr(self) -> str:
        return f"target={self.target}, ada_kimg={self.ada_kimg}, interval={self.interval}, settings={self.settings}"
