"""A configurable UNet (Ronneberger et al. 2015, "U-Net: Convolutional Networks for Biomedical Image Segmentation")
for image-to-image translation.

Encoder: per level a :class:`~facelab.nn.blocks.DoubleConv` then a 2x down-sampling; bottleneck ``DoubleConv`` to
``bottleneck_channels`` and ``n_res_blocks`` :class:`~facelab.nn.blocks.ResidualBlock` (pix2pix/CycleGAN style);
decoder: per level a 2x up-sampling to that level's width, the skip from the encoder (concatenated, as in the
original UNet, or *added*, as in DualStream's generator: "layer l added to layer h - l"), a ``DoubleConv``;
a final 1x1 convolution and an optional output activation.

Optional conditioning: a hook ``conditioning(num_features, condition_dim) -> module`` builds one module per decoder
level (the bottleneck output and every decoder level's features), each called as ``module(x, condition)``;
:class:`facelab.nn.AdaIN` and :class:`facelab.nn.FiLM` fit (AdaIN-modulated decoders as in FaceDet3D's DetH).

The module names (``down``, ``bottleneck``, ``res_blocks``, ``up``, ``up_convs``, ``out``; ``pools`` and ``cond``
only when used) are the state-dict keys and do not change with ``norm``, ``skip`` or ``out_activation``, so
checkpoints of the plain configuration (batch norm, concatenated skips, max-pool, transposed convolutions) load
into it unchanged.

Shapes: ``B`` batch, ``H, W`` image size, ``D`` condition size.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from facelab.nn.blocks import Activation, DoubleConv, Norm, ResidualBlock, activation_layer

__all__ = ["Downsample", "OutActivation", "SkipMode", "UNet", "Upsample"]

SkipMode = Literal["concat", "add"]
#: ``transpose``: ConvTranspose2d(2, stride 2) (SMIRK); ``bilinear`` / ``nearest``: interpolation x2 + conv 3x3.
Upsample = Literal["transpose", "bilinear", "nearest"]
#: ``max`` / ``avg``: 2x2 pooling; ``conv``: a learned 3x3 convolution with stride 2.
Downsample = Literal["max", "avg", "conv"]
OutActivation = Literal["none", "sigmoid", "tanh"]
#: ``(num_features, condition_dim) -> module`` with ``module(x (B, C, H, W), condition (B, D)) -> (B, C, H, W)``.
ConditioningFactory = Callable[[int, int], nn.Module]


def _upsampler(mode: Upsample, in_channels: int, out_channels: int) -> nn.Module:
    if mode == "transpose":
        return nn.ConvTranspose2d(in_channels, out_channels, 2, stride=2)
    if mode in ("bilinear", "nearest"):
        return nn.Sequential(nn.Upsample(scale_factor=2, mode=mode),
                             nn.Conv2d(in_channels, out_channels, 3, padding=1))
    raise ValueError(f"upsample must be 'transpose', 'bilinear' or 'nearest', got {mode!r}")


class UNet(nn.Module):
    """A UNet with configurable depth, widths, normalisation, skips, resampling and per-level conditioning.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        channels: encoder widths per level; the depth is ``len(channels)``.
        bottleneck_channels: bottleneck width; None = ``2 * channels[-1]``.
        n_res_blocks: residual blocks at the bottleneck.
        norm: ``batch``, ``instance`` (no affine) or ``none`` (convolutions then carry biases).
        activation: non-linearity of the conv blocks.
        skip: ``concat`` (decoder conv sees ``2 C`` channels) or ``add`` (``C``: fewer parameters).
        upsample: decoder up-sampling, see :data:`Upsample`.
        downsample: encoder down-sampling, see :data:`Downsample`.
        out_activation: applied to the final 1x1 convolution (``none`` returns logits).
        condition_dim: size ``D`` of the condition vector (0 = unconditioned).
        conditioning: per-level hook factory (e.g. the class :class:`facelab.nn.AdaIN`), built for the bottleneck
            and each decoder level with that level's width; needs ``condition_dim > 0``.

    Shapes:
        ``forward(x (B, in_channels, H, W), condition (B, D) | None) -> (B, out_channels, H, W)``; H and W divisible
        by ``2 ** len(channels)``.
    """

    def __init__(self, in_channels: int, out_channels: int, channels: Sequence[int] = (64, 128, 256, 512),
                 bottleneck_channels: int | None = None, n_res_blocks: int = 0, norm: Norm = "batch",
                 activation: Activation = "relu", skip: SkipMode = "concat", upsample: Upsample = "transpose",
                 downsample: Downsample = "max", out_activation: OutActivation = "none", condition_dim: int = 0,
                 conditioning: ConditioningFactory | None = None) -> None:
        super().__init__()
        channels = [int(c) for c in channels]
        if not channels or min(channels) <= 0 or n_res_blocks < 0:
            raise ValueError(f"UNet needs at least one positive level width and n_res_blocks >= 0, got channels "
                             f"{channels}, n_res_blocks {n_res_blocks}")
        if skip not in ("concat", "add"):
            raise ValueError(f"skip must be 'concat' or 'add', got {skip!r}")
        if downsample not in ("max", "avg", "conv"):
            raise ValueError(f"downsample must be 'max', 'avg' or 'conv', got {downsample!r}")
        if (conditioning is None) != (condition_dim == 0) or condition_dim < 0:
            raise ValueError(f"conditioning and condition_dim > 0 go together, got conditioning={conditioning!r}, "
                             f"condition_dim={condition_dim}")
        bottleneck = int(bottleneck_channels) if bottleneck_channels is not None else 2 * channels[-1]
        self.skip, self.downsample, self.condition_dim = skip, downsample, condition_dim
        self.factor = 2 ** len(channels)

        widths = [in_channels, *channels]
        self.down = nn.ModuleList(DoubleConv(a, b, norm, activation) for a, b in zip(widths[:-1], widths[1:]))
        if downsample == "conv":
            self.pools = nn.ModuleList(nn.Conv2d(c, c, 3, stride=2, padding=1) for c in channels)
        self.bottleneck = DoubleConv(channels[-1], bottleneck, norm, activation)
        self.res_blocks = nn.Sequential(*(ResidualBlock(bottleneck, norm, activation) for _ in range(n_res_blocks)))
        ups = [bottleneck, *reversed(channels)]
        self.up = nn.ModuleList(_upsampler(upsample, a, b) for a, b in zip(ups[:-1], ups[1:]))
        fan = 2 if skip == "concat" else 1
        self.up_convs = nn.ModuleList(DoubleConv(fan * c, c, norm, activation) for c in reversed(channels))
        if conditioning is not None:
            self.cond = nn.ModuleList(conditioning(c, condition_dim) for c in ups)
        self.out = nn.Conv2d(channels[0], out_channels, 1)
        if out_activation not in ("none", "sigmoid", "tanh"):
            raise ValueError(f"out_activation must be 'none', 'sigmoid' or 'tanh', got {out_activation!r}")
        self.out_activation = activation_layer(out_activation)

    def _pool(self, x: Tensor, level: int) -> Tensor:
        if self.downsample == "max":
            return F.max_pool2d(x, 2)
        if self.downsample == "avg":
            return F.avg_pool2d(x, 2)
        return self.pools[level](x)

    def _condition(self, x: Tensor, level: int, condition: Tensor | None) -> Tensor:
        return self.cond[level](x, condition) if self.condition_dim else x

    def forward(self, x: Tensor, condition: Tensor | None = None) -> Tensor:
        if x.dim() != 4 or x.shape[-1] % self.factor or x.shape[-2] % self.factor:
            raise ValueError(f"UNet input must be (B, C, H, W) with H, W divisible by {self.factor}, "
                             f"got {tuple(x.shape)}")
        if self.condition_dim and (condition is None or condition.shape != (x.shape[0], self.condition_dim)):
            got = None if condition is None else tuple(condition.shape)
            raise ValueError(f"this UNet is conditioned: pass a (B, {self.condition_dim}) condition, got {got}")
        if not self.condition_dim and condition is not None:
            raise ValueError("this UNet has no conditioning hook (condition_dim=0) but a condition was given")
        skips = []
        for level, block in enumerate(self.down):
            x = block(x)
            skips.append(x)
            x = self._pool(x, level)
        x = self._condition(self.res_blocks(self.bottleneck(x)), 0, condition)
        for level, (up, conv, skip) in enumerate(zip(self.up, self.up_convs, reversed(skips)), start=1):
            x = up(x)
            x = conv(torch.cat([x, skip], dim=1) if self.skip == "concat" else x + skip)
            x = self._condition(x, level, condition)
        return self.out_activation(self.out(x))
