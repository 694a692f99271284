"""Convolutional building blocks shared by the generators: normalisation/activation factories, the UNet double
convolution, the pix2pix residual block and the StarGAN-v2 pre-activation residual block.

Shapes: ``B`` batch, ``C`` channels, ``H, W`` spatial size.
"""

from __future__ import annotations

import math
from typing import Literal

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "Activation",
    "DoubleConv",
    "Norm",
    "PreActResBlock",
    "ResidualBlock",
    "activation_layer",
    "norm_layer",
]

#: Feature normalisation of a block: BatchNorm, InstanceNorm without affine (pix2pix/CycleGAN), or none.
Norm = Literal["batch", "instance", "none"]
#: Non-linearities by name (``leaky_relu`` has slope 0.2, the GAN default).
Activation = Literal["relu", "leaky_relu", "silu", "gelu", "tanh", "sigmoid", "none"]


def norm_layer(norm: Norm, channels: int) -> nn.Module:
    """The normalisation layer named ``norm`` for ``channels`` feature maps; ``"none"`` is an ``nn.Identity``.

    ``"instance"`` is ``InstanceNorm2d(affine=False)`` as in pix2pix/CycleGAN (Isola et al. 2017; Zhu et al. 2017).
    """
    if norm == "batch":
        return nn.BatchNorm2d(channels)
    if norm == "instance":
        return nn.InstanceNorm2d(channels, affine=False)
    if norm == "none":
        return nn.Identity()
    raise ValueError(f"norm must be 'batch', 'instance' or 'none', got {norm!r}")


def activation_layer(activation: Activation, inplace: bool = False) -> nn.Module:
    """The non-linearity named ``activation`` (``"none"`` is an ``nn.Identity``)."""
    if activation == "relu":
        return nn.ReLU(inplace=inplace)
    if activation == "leaky_relu":
        return nn.LeakyReLU(0.2, inplace=inplace)
    if activation == "silu":
        return nn.SiLU(inplace=inplace)
    if activation == "gelu":
        return nn.GELU()
    if activation == "tanh":
        return nn.Tanh()
    if activation == "sigmoid":
        return nn.Sigmoid()
    if activation == "none":
        return nn.Identity()
    raise ValueError(f"unknown activation {activation!r}; expected one of relu, leaky_relu, silu, gelu, tanh, "
                     "sigmoid, none")


class DoubleConv(nn.Sequential):
    """Two (conv 3x3 -> norm -> activation) layers, the UNet "basic block" (Ronneberger et al. 2015).

    Convolutions carry a bias only without normalisation (a norm's mean subtraction would cancel it). The child
    indices are the same for every ``norm`` (0 conv, 1 norm, 2 act, 3 conv, 4 norm, 5 act), so checkpoint keys do
    not depend on it.

    Shapes:
        (B, in_channels, H, W) -> (B, out_channels, H, W).
    """

    def __init__(self, in_channels: int, out_channels: int, norm: Norm = "batch",
                 activation: Activation = "relu") -> None:
        bias = norm == "none"
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=bias),
            norm_layer(norm, out_channels),
            activation_layer(activation, inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=bias),
            norm_layer(norm, out_channels),
            activation_layer(activation, inplace=True),
        )


class ResidualBlock(nn.Module):
    """``x + (reflect-pad, conv 3x3, norm, act, reflect-pad, conv 3x3, norm)(x)``, the pix2pix/CycleGAN ResNet
    block (Johnson et al. 2016; Zhu et al. 2017), e.g. at a UNet bottleneck.

    Shapes:
        (B, C, H, W) -> (B, C, H, W).
    """

    def __init__(self, channels: int, norm: Norm = "batch", activation: Activation = "relu") -> None:
        super().__init__()
        bias = norm == "none"
        self.body = nn.Sequential(
            nn.ReflectionPad2d(1),
            nn.Conv2d(channels, channels, 3, bias=bias),
            norm_layer(norm, channels),
            activation_layer(activation, inplace=True),
            nn.ReflectionPad2d(1),
            nn.Conv2d(channels, channels, 3, bias=bias),
            norm_layer(norm, channels),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class PreActResBlock(nn.Module):
    """StarGAN v2's encoder/discriminator residual block ``ResBlk`` (Choi et al. 2020, CVPR, appendix):

    ``residual = conv3x3(act(norm(avgpool?(conv3x3(act(norm(x)))))))`` (the pool only with ``downsample``),
    ``shortcut = avgpool?(conv1x1(x))`` (the 1x1 conv only when the width changes), output
    ``(residual + shortcut) / sqrt(2)`` (unit variance for independent unit-variance branches).

    The norm is ``InstanceNorm2d(affine=True)`` for ``norm="instance"`` (StarGAN v2's style encoder input blocks).

    Shapes:
        (B, in_channels, H, W) -> (B, out_channels, H / 2, W / 2) with ``downsample``, else (.., H, W).
    """

    def __init__(self, in_channels: int, out_channels: int, norm: Norm = "instance", downsample: bool = False,
                 activation: Activation = "leaky_relu") -> None:
        super().__init__()
        self.downsample = downsample
        self.norm1 = _affine_norm(norm, in_channels)
        self.norm2 = _affine_norm(norm, in_channels)
        self.act = activation_layer(activation)
        self.conv1 = nn.Conv2d(in_channels, in_channels, 3, padding=1)
        self.conv2 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.shortcut = nn.Conv2d(in_channels, out_channels, 1, bias=False) if in_channels != out_channels else None

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(self.act(self.norm1(x)))
        if self.downsample:
            h = F.avg_pool2d(h, 2)
        h = self.conv2(self.act(self.norm2(h)))
        s = self.shortcut(x) if self.shortcut is not None else x
        if self.downsample:
            s = F.avg_pool2d(s, 2)
        return (h + s) / math.sqrt(2.0)


def _affine_norm(norm: Norm, channels: int) -> nn.Module:
    if norm == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    return norm_layer(norm, channels)
