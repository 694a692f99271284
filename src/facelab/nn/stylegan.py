"""Generic StyleGAN2 blocks (Karras et al. 2020, "Analyzing and Improving the Image Quality of StyleGAN", CVPR):
weight modulation/demodulation (§2.2, Eq. 1-3), noise injection, and the discriminator's minibatch standard
deviation layer (Karras et al. 2018, ProGAN §3; StyleGAN2's group variant).

Shapes: ``B`` batch, ``C`` channels (``I`` in, ``O`` out), ``H, W`` spatial size, ``D`` style (w) size.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from facelab.nn.equalized import EqualLinear

__all__ = [
    "MinibatchStdDev",
    "ModulatedConv2d",
    "NoiseInjection",
    "minibatch_stddev",
    "modulated_conv2d",
    "modulated_conv2d_reference",
]


def _demodulation_coefficients(weight: Tensor, styles: Tensor, eps: float) -> Tensor:
    """Eq. 3's ``1 / sqrt(sum_{i,k} (s_{b,i} w_{o,i,k})^2 + eps)`` as (B, O), from (O, I, k, k) weights and (B, I)
    styles: ``(s^2) @ (sum_k w^2)^T``, without building the per-sample weights."""
    return (styles.square() @ weight.square().sum(dim=(2, 3)).t() + eps).rsqrt()


def modulated_conv2d(x: Tensor, weight: Tensor, styles: Tensor, demodulate: bool = True, padding: int | None = None,
                     upsample: bool = False, eps: float = 1e-8, fused: bool = True) -> Tensor:
    """A convolution whose weights are scaled per sample by a style (StyleGAN2 Eq. 1) and optionally demodulated
    (Eq. 3), computed as one grouped convolution over the batch.

    ``w'_{b,o,i,k} = s_{b,i} w_{o,i,k}``; with ``demodulate``, ``w''_{b,o,i,k} = w'_{b,o,i,k} /
    sqrt(sum_{i,k} w'^2_{b,o,i,k} + eps)``, so that unit-variance i.i.d. input gives unit-variance output whatever
    the style (Eq. 2). ``upsample`` doubles the size first with bilinear interpolation (half-pixel centres: the
    zero-stuffed input filtered with StyleGAN2's separable [1, 3, 3, 1] FIR, with replicated borders).

    Args:
        x: (B, I, H, W) input.
        weight: (O, I, k, k) weights (already multiplied by any equalized-lr gain).
        styles: (B, I) per-sample input-channel scales.
        demodulate: normalise each output channel's modulated weights.
        padding: zero padding; None = ``k // 2``.
        upsample: up-sample x2 before the convolution.
        eps: added under the square root of the demodulation.
        fused: one grouped convolution with per-sample weights (the default). ``False`` computes the same result
            as StyleGAN2's non-fused path: the input scaled by the styles, one ordinary convolution with the shared
            weights, the output scaled by the demodulation coefficients (they depend on the styles and weights
            only, Eq. 3, so they factor out of the sum). Often faster for large batches on GPUs.

    Returns:
        (B, O, H', W'), ``H' = 2 H`` with ``upsample``.
    """
    b, i = x.shape[:2]
    o, wi, kh, kw = weight.shape
    if x.dim() != 4 or wi != i or styles.shape != (b, i):
        raise ValueError(f"modulated_conv2d expects x (B, I, H, W), weight (O, I, k, k) and styles (B, I); got "
                         f"{tuple(x.shape)}, {tuple(weight.shape)}, {tuple(styles.shape)}")
    pad = kh // 2 if padding is None else padding
    if not fused:
        if upsample:
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        y = F.conv2d(x * styles[:, :, None, None], weight, padding=pad)  # Eq. 1 applied to the input
        if demodulate:  # Eq. 3: sigma_{b,o} = sqrt(sum_{i,k} (s_{b,i} w_{o,i,k})^2 + eps)
            dcoefs = _demodulation_coefficients(weight, styles, eps)  # (B, O)
            y = y * dcoefs[:, :, None, None]
        return y
    # Eq. 1 and 3 folded into one (B, O, I) scale before the single broadcast over the kernel: the demodulation
    # coefficients are computed from the styles and the shared weights' squared norms, (B, I) @ (I, O), never
    # from the (B, O, I, k, k) tensor, so the per-sample weights are built with one multiply (and their gradient
    # with one multiply-reduce per input) instead of five elementwise passes over B x O x I x k^2 values.
    scale = styles[:, None, :]  # (B, 1, I), Eq. 1
    if demodulate:  # Eq. 3: 1 / sqrt(sum_{i,k} (s_{b,i} w_{o,i,k})^2 + eps)
        dcoefs = _demodulation_coefficients(weight, styles, eps)  # (B, O)
        scale = scale * dcoefs[:, :, None]  # (B, O, I)
    w = weight[None] * scale[..., None, None]  # (B, O, I, k, k)
    if upsample:
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
    h, wd = x.shape[-2:]
    y = F.conv2d(x.reshape(1, b * i, h, wd), w.reshape(b * o, i, kh, kw), groups=b, padding=pad)
    return y.reshape(b, o, *y.shape[-2:])


def modulated_conv2d_reference(x: Tensor, weight: Tensor, styles: Tensor, demodulate: bool = True,
                               padding: int | None = None, upsample: bool = False, eps: float = 1e-8) -> Tensor:
    """The reference of :func:`modulated_conv2d`: Eq. 1 and 3 written out one sample at a time (a Python loop of
    ordinary convolutions). Slow; for tests and benchmarks.

    Shapes: as :func:`modulated_conv2d`.
    """
    pad = weight.shape[-1] // 2 if padding is None else padding
    outs = []
    for b in range(x.shape[0]):
        w = weight * styles[b][None, :, None, None]  # Eq. 1
        if demodulate:
            w = w / torch.sqrt(w.square().sum(dim=(1, 2, 3), keepdim=True) + eps)  # Eq. 3
        xb = x[b:b + 1]
        if upsample:
            xb = F.interpolate(xb, scale_factor=2, mode="bilinear", align_corners=False)
        outs.append(F.conv2d(xb, w, padding=pad))
    return torch.cat(outs)


class ModulatedConv2d(nn.Module):
    """StyleGAN2's modulated convolution with its style affine (an :class:`EqualLinear` from w, bias init 1).

    Weights ~ N(0, 1) scaled by ``1 / sqrt(in_channels * k^2)`` (equalized learning rate). No bias, noise or
    activation: StyleGAN2's synthesis layer adds those after this (see :class:`NoiseInjection`,
    :func:`facelab.nn.bias_act`). ``demodulate=False`` with ``kernel_size=1`` is the toRGB layer.

    Args:
        in_channels: input channels ``I``.
        out_channels: output channels ``O``.
        kernel_size: square kernel size.
        style_dim: size ``D`` of the w vector.
        demodulate: apply Eq. 3.
        upsample: up-sample x2 before the convolution (see :func:`modulated_conv2d`).
        eps: demodulation epsilon.
        fused: grouped convolution (True) or StyleGAN2's non-fused activation scaling (False; see
            :func:`modulated_conv2d`), the same result; None = NVlabs' rule: non-fused in training mode (faster
            forward + backward on large batches), grouped in eval mode.

    Shapes:
        ``forward(x (B, I, H, W), w (B, D)) -> (B, O, H', W')``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, style_dim: int,
                 demodulate: bool = True, upsample: bool = False, eps: float = 1e-8, fused: bool | None = True) -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size
        self.demodulate, self.upsample, self.eps, self.fused = demodulate, upsample, eps, fused
        self.affine = EqualLinear(style_dim, in_channels, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.weight_gain = 1.0 / math.sqrt(in_channels * kernel_size ** 2)

    def forward(self, x: Tensor, w: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"ModulatedConv2d expects (B, {self.in_channels}, H, W), got {tuple(x.shape)}")
        return modulated_conv2d(x, self.weight * self.weight_gain, self.affine(w), self.demodulate,
                                upsample=self.upsample, eps=self.eps,
                                fused=not self.training if self.fused is None else self.fused)


class NoiseInjection(nn.Module):
    """``x + strength * noise`` with one learned strength per layer, initialised to 0 (StyleGAN2 §2, Fig. 2c); the
    noise is one (B, 1, H, W) map broadcast over channels, fresh N(0, 1) unless given.

    Shapes:
        ``forward(x (B, C, H, W), noise (B, 1, H, W) | None) -> (B, C, H, W)``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.strength = nn.Parameter(torch.zeros(()))

    def forward(self, x: Tensor, noise: Tensor | None = None, generator: torch.Generator | None = None) -> Tensor:
        shape = (x.shape[0], 1, *x.shape[-2:])
        if noise is None:
            noise = torch.randn(shape, generator=generator, device=x.device, dtype=x.dtype)
        elif noise.shape != shape:
            raise ValueError(f"noise must be {shape}, got {tuple(noise.shape)}")
        return x + self.strength * noise


def minibatch_stddev(x: Tensor, group_size: int = 4, num_channels: int = 1, eps: float = 1e-8) -> Tensor:
    """Append the minibatch standard deviation as extra feature maps (ProGAN §3; StyleGAN2's grouped version).

    The batch is split into groups of ``G = min(group_size, B)`` samples, sample ``n`` in group ``n mod (B / G)``;
    within each group the standard deviation of every feature over the group is averaged over the channels of
    each of ``num_channels`` channel slices and over H, W, giving one value per (group, slice), broadcast as
    ``num_channels`` constant maps.

    Args:
        x: (B, C, H, W) with B divisible by G and C divisible by ``num_channels``.

    Returns:
        (B, C + num_channels, H, W).
    """
    b, c, h, w = x.shape
    g = min(group_size, b)
    if b % g or c % num_channels:
        raise ValueError(f"minibatch_stddev needs the batch ({b}) divisible by the group size ({g}) and the "
                         f"channels ({c}) divisible by num_channels ({num_channels})")
    y = x.reshape(g, b // g, num_channels, c // num_channels, h, w)
    y = (y - y.mean(dim=0)).square().mean(dim=0).add(eps).sqrt()  # (B/G, F, C/F, H, W)
    y = y.mean(dim=(2, 3, 4)).reshape(b // g, num_channels, 1, 1).repeat(g, 1, h, w)
    return torch.cat([x, y], dim=1)


class MinibatchStdDev(nn.Module):
    """Module form of :func:`minibatch_stddev` (StyleGAN2's discriminator epilogue: group 4, 1 channel).

    Shapes:
        (B, C, H, W) -> (B, C + num_channels, H, W).
    """

    def __init__(self, group_size: int = 4, num_channels: int = 1) -> None:
        super().__init__()
        self.group_size, self.num_channels = group_size, num_channels

    def forward(self, x: Tensor) -> Tensor:
        return minibatch_stddev(x, self.group_size, self.num_channels)

    def extra_repr(self) -> str:
        return f"group_size={self.group_size}, num_channels={self.num_channels}"
