"""RCAN super-resolution of detail maps (Zhang et al. 2018, "Image Super-Resolution Using Very Deep Residual Channel
Attention Networks"; FaceDet3D Eq. 8-9).

* Channel attention (CA): global average pool -> 1x1 conv C -> C / r -> ReLU -> 1x1 conv -> sigmoid -> scale.
* RCAB: ``x + CA(conv3x3(ReLU(conv3x3(x))))``.
* Residual group: ``n_blocks`` RCABs and a conv3x3, with a short skip; the body is ``n_groups`` groups and a conv3x3
  with a long skip (residual in residual). Paper defaults: 10 groups x 20 blocks, 64 features, reduction 16.
* Upsampler: pixel shuffle, ``log2(scale)`` stages of conv3x3 C -> 4C + PixelShuffle(2) (x4: two stages); a
  conv3x3 to one channel. Maps are seen divided by ``max_displacement_mm``; the output adds the bilinearly
  upsampled input (``residual_upsample``), so the network learns only the missing high frequencies (a common
  variant of RCAN for residual-like targets; set False for the original head).

Inference (Eq. 9) applies the network twice, 256 -> 1024 -> 4096, through :func:`upscale_tiled`: the input is cut
into overlapping tiles, each tile is super-resolved alone and the outputs are blended with a separable linear ramp
over the overlaps, so peak memory is bounded by one tile's activations plus the output canvas (see there).

Shapes: ``B`` batch, ``H, W`` low-resolution size, ``s`` the scale.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["RCAN", "ChannelAttention", "RCAB", "ResidualGroup", "rcan_twice", "tiled_peak_bytes", "upscale_tiled"]


class ChannelAttention(nn.Module):
    """RCAN's CA: per-channel gates from the global average (Eq. 4-5 of Zhang et al. 2018). (B, C, H, W) -> same."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.gate = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(channels, hidden, 1), nn.ReLU(inplace=True),
                                  nn.Conv2d(hidden, channels, 1), nn.Sigmoid())
        nn.init.constant_(self.gate[1].bias, 0.5)  # the few hidden units start active (a dead one never recovers)

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gate(x)


class RCAB(nn.Module):
    """Residual channel-attention block: ``x + CA(conv(ReLU(conv(x))))``. (B, C, H, W) -> same."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(inplace=True),
                                  nn.Conv2d(channels, channels, 3, padding=1), ChannelAttention(channels, reduction))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class ResidualGroup(nn.Module):
    """``x + conv(RCAB^n(x))`` (short skip connection). (B, C, H, W) -> same."""

    def __init__(self, channels: int, n_blocks: int, reduction: int = 16) -> None:
        super().__init__()
        self.body = nn.Sequential(*(RCAB(channels, reduction) for _ in range(n_blocks)),
                                  nn.Conv2d(channels, channels, 3, padding=1))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class RCAN(nn.Module):
    """RCAN for one-channel displacement maps (module docstring).

    Args:
        features: channels ``C`` (paper 64).
        n_groups: residual groups (paper 10).
        n_blocks: RCABs per group (paper 20).
        reduction: channel-attention reduction ``r`` (16).
        scale: up-scaling factor, a power of two (FaceDet3D: 4).
        max_displacement_mm: the maps are divided by this inside the network.
        residual_upsample: add the bilinearly upsampled input to the output.

    Shapes:
        (B, 1, H, W) mm -> (B, 1, s H, s W) mm.
    """

    def __init__(self, features: int = 64, n_groups: int = 10, n_blocks: int = 20, reduction: int = 16,
                 scale: int = 4, max_displacement_mm: float = 3.0, residual_upsample: bool = True) -> None:
        super().__init__()
        stages = int(round(math.log2(scale)))
        if scale < 2 or 2 ** stages != scale:
            raise ValueError(f"scale must be a power of two >= 2, got {scale}")
        self.scale, self.max_displacement_mm = int(scale), float(max_displacement_mm)
        self.residual_upsample = bool(residual_upsample)
        self.head = nn.Conv2d(1, features, 3, padding=1)
        self.body = nn.Sequential(*(ResidualGroup(features, n_blocks, reduction) for _ in range(n_groups)),
                                  nn.Conv2d(features, features, 3, padding=1))
        ups: list[nn.Module] = []
        for _ in range(stages):
            ups += [nn.Conv2d(features, 4 * features, 3, padding=1), nn.PixelShuffle(2)]
        self.upsample = nn.Sequential(*ups)
        self.tail = nn.Conv2d(features, 1, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != 1:
            raise ValueError(f"RCAN expects (B, 1, H, W) maps, got {tuple(x.shape)}")
        h = self.head(x / self.max_displacement_mm)
        h = h + self.body(h)  # long skip
        out = self.tail(self.upsample(h)) * self.max_displacement_mm
        if self.residual_upsample:
            out = out + F.interpolate(x, scale_factor=self.scale, mode="bilinear", align_corners=False)
        return out


def _ramp(length: int, overlap: int, at_start: bool, at_end: bool, like: Tensor) -> Tensor:
    """(length,) blending weights of one tile axis. On a side that borders another tile the first quarter of the
    ``overlap`` has weight 0 (those texels saw the tile's zero padding), the middle half ramps linearly to 1 (the
    neighbour's ramp mirrors it: the weights sum to 1), the rest is 1."""
    w = torch.ones(length, dtype=like.dtype, device=like.device)
    margin = overlap // 4
    ramp_len = overlap - 2 * margin
    if overlap > 0:
        edge = torch.zeros(overlap, dtype=like.dtype, device=like.device)
        edge[margin:margin + ramp_len] = (torch.arange(ramp_len, dtype=like.dtype, device=like.device) + 0.5) / ramp_len
        edge[margin + ramp_len:] = 1.0
        if not at_start:
            w[:overlap] = edge
        if not at_end:
            w[-overlap:] = edge.flip(0)
    return w


def _starts(size: int, tile: int, step: int) -> list[int]:
    if size <= tile:
        return [0]
    starts = list(range(0, size - tile, step))
    return starts + [size - tile]


@torch.no_grad()
def upscale_tiled(net: nn.Module, x: Tensor, tile: int = 128, overlap: int = 16, scale: int | None = None) -> Tensor:
    """Super-resolve (B, 1, H, W) maps tile by tile with overlapping, linearly blended tiles.

    Tiles are ``tile``^2 input texels advancing by ``tile - overlap``; every output texel is the weighted mean of
    the tiles covering it: in an overlap, each tile's outer quarter (texels that saw its zero padding) gets weight
    0 and the middle half is a linear cross-fade. So a network whose receptive field reaches at most ``overlap / 4``
    input texels gives exactly its untiled output; RCAN (a large receptive field and global channel-attention
    averages per tile) differs from its untiled output only by what those averages and far context change.

    Peak memory bound (no gradients, fp32): the output canvas and its weights, ``2 * 4 B (s H)(s W)`` bytes, plus one
    tile through the network: RCAN's largest live tensors are the last upsampler stage's (a ``4C``-channel map at
    half the output tile side, its pixel-shuffled copy, the tail's input), under ``6 * 4 B C (s tile)^2`` bytes,
    independent of ``H, W``. For 1024 -> 4096 with C = 64, tile = 128, B = 1: 2 x 64 MiB canvas + < 0.4 GiB (vs
    ~13 GiB of activations for the whole map at once); :func:`tiled_peak_bytes` evaluates the bound.

    Args:
        net: ``(b, 1, h, w) -> (b, 1, s h, s w)``.
        x: (B, 1, H, W) input.
        tile: input tile side.
        overlap: overlap of neighbouring tiles in input texels (< tile).
        scale: the network's factor (default ``net.scale``).

    Returns:
        (B, 1, s H, s W).
    """
    s = int(scale if scale is not None else net.scale)
    if not 0 <= overlap < tile:
        raise ValueError(f"need 0 <= overlap < tile, got overlap {overlap}, tile {tile}")
    b, c, h, w = x.shape
    out = x.new_zeros(b, c, s * h, s * w)
    weight = x.new_zeros(1, 1, s * h, s * w)
    step = tile - overlap
    rows, cols = _starts(h, tile, step), _starts(w, tile, step)
    for y0 in rows:
        for x0 in cols:
            th, tw = min(tile, h), min(tile, w)
            patch = net(x[:, :, y0:y0 + th, x0:x0 + tw])
            wy = _ramp(s * th, s * overlap, y0 == 0, y0 + th >= h, x)
            wx = _ramp(s * tw, s * overlap, x0 == 0, x0 + tw >= w, x)
            wt = wy[:, None] * wx[None, :]
            out[:, :, s * y0:s * (y0 + th), s * x0:s * (x0 + tw)] += patch * wt
            weight[:, :, s * y0:s * (y0 + th), s * x0:s * (x0 + tw)] += wt
    return out / weight.clamp(min=1e-8)


def tiled_peak_bytes(batch: int, height: int, width: int, scale: int, tile: int, features: int) -> int:
    """The :func:`upscale_tiled` peak-memory bound in bytes (fp32): canvas + weights + one tile's activations."""
    canvas = 2 * 4 * batch * (scale * height) * (scale * width)
    return canvas + 6 * 4 * batch * features * (scale * tile) ** 2


@torch.no_grad()
def rcan_twice(net: nn.Module, detail: Tensor, tile: int = 128, overlap: int = 16) -> Tensor:
    """FaceDet3D Eq. 9: ``D~(I_y)^HR = RCAN(RCAN(D~(I_y)))`` (256 -> 1024 -> 4096 for a x4 RCAN), both passes
    tiled (:func:`upscale_tiled`). (B, 1, S, S) -> (B, 1, s^2 S, s^2 S)."""
    return upscale_tiled(net, upscale_tiled(net, detail, tile, overlap), tile, overlap)
