"""Equalized learning-rate layers (Karras et al. 2018, "Progressive Growing of GANs", §4.1; StyleGAN2, Karras et al.
2020, "Analyzing and Improving the Image Quality of StyleGAN", configuration B onwards).

Weights are stored as ``N(0, 1) / lr_multiplier`` and scaled at run time by ``gain * lr_multiplier / sqrt(fan_in)``:
the effective weight has the He-style standard deviation ``gain / sqrt(fan_in)``, while Adam's per-parameter step
(independent of the gradient's scale) acts on a unit-scale parameter, so every layer learns at the same speed.
``lr_multiplier`` < 1 slows a layer down (StyleGAN's mapping network: 0.01). Biases are stored as
``bias_init / lr_multiplier`` and scaled by ``lr_multiplier``, so the effective initial bias is ``bias_init``.

``activation="leaky_relu"`` is StyleGAN2's ``bias_act`` with ``lrelu``: slope 0.2, then x ``sqrt(2)`` so the
activation keeps unit variance.

Shapes: ``B`` batch, ``C`` channels, ``H, W`` spatial size.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["EqualConv2d", "EqualLinear", "LinearOrLeaky", "bias_act"]

LinearOrLeaky = Literal["linear", "leaky_relu"]


def bias_act(x: Tensor, bias: Tensor | None, activation: LinearOrLeaky = "linear", dim: int = 1) -> Tensor:
    """``act(x + bias)`` with StyleGAN2's gains: ``linear`` (gain 1) or ``leaky_relu`` (slope 0.2, gain sqrt(2)).

    Args:
        x: (B, C, ...) features.
        bias: (C,) or None, broadcast along ``dim``.
        activation: ``linear`` or ``leaky_relu``.
        dim: the channel dimension of ``x``.
    """
    if bias is not None:
        x = x + bias.view([-1 if i == dim else 1 for i in range(x.dim())])
    if activation == "leaky_relu":
        return F.leaky_relu(x, 0.2) * math.sqrt(2.0)
    if activation == "linear":
        return x
    raise ValueError(f"activation must be 'linear' or 'leaky_relu', got {activation!r}")


class _Equalized(nn.Module):
    weight: nn.Parameter
    bias: nn.Parameter | None

    def _init(self, shape: tuple[int, ...], fan_in: int, bias: bool, bias_init: float, lr_multiplier: float,
              gain: float, activation: LinearOrLeaky) -> None:
        if lr_multiplier <= 0 or gain <= 0:
            raise ValueError(f"lr_multiplier and gain must be positive, got {lr_multiplier}, {gain}")
        if activation not in ("linear", "leaky_relu"):
            raise ValueError(f"activation must be 'linear' or 'leaky_relu', got {activation!r}")
        self.weight = nn.Parameter(torch.randn(shape) / lr_multiplier)
        self.bias = nn.Parameter(torch.full(shape[:1], bias_init / lr_multiplier)) if bias else None
        self.weight_gain = gain * lr_multiplier / math.sqrt(fan_in)
        self.bias_gain = lr_multiplier
        self.activation = activation

    def effective_weight(self) -> Tensor:
        """The weight the layer applies: ``weight * gain * lr_multiplier / sqrt(fan_in)``."""
        return self.weight * self.weight_gain

    def effective_bias(self) -> Tensor | None:
        """The bias the layer adds: ``bias * lr_multiplier``, or None."""
        return None if self.bias is None else self.bias * self.bias_gain


class EqualLinear(_Equalized):
    """A fully connected layer with equalized learning rate (StyleGAN2's ``FullyConnectedLayer``).

    Args:
        in_features: input size (the fan-in).
        out_features: output size.
        bias: learn a bias.
        bias_init: the effective initial bias (StyleGAN2's style affines: 1).
        lr_multiplier: learning-rate multiplier (mapping network: 0.01).
        gain: weight gain; the effective weight std is ``gain / sqrt(in_features)``.
        activation: ``linear`` or ``leaky_relu`` (x sqrt(2)).

    Shapes:
        (..., in_features) -> (..., out_features).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, bias_init: float = 0.0,
                 lr_multiplier: float = 1.0, gain: float = 1.0, activation: LinearOrLeaky = "linear") -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self._init((out_features, in_features), in_features, bias, bias_init, lr_multiplier, gain, activation)

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"EqualLinear expects (..., {self.in_features}), got {tuple(x.shape)}")
        return bias_act(F.linear(x, self.effective_weight()), self.effective_bias(), self.activation, dim=x.dim() - 1)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"activation={self.activation}")


class EqualConv2d(_Equalized):
    """A 2D convolution with equalized learning rate (fan-in ``in_channels * kernel_size ** 2``).

    Args:
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: square kernel size.
        stride: convolution stride.
        padding: zero padding; None = ``kernel_size // 2`` (same size for odd kernels at stride 1).
        bias: learn a bias.
        bias_init: the effective initial bias.
        lr_multiplier: learning-rate multiplier.
        gain: weight gain; the effective weight std is ``gain / sqrt(fan_in)``.
        activation: ``linear`` or ``leaky_relu`` (x sqrt(2)).

    Shapes:
        (B, in_channels, H, W) -> (B, out_channels, H', W').
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 padding: int | None = None, bias: bool = True, bias_init: float = 0.0, lr_multiplier: float = 1.0,
                 gain: float = 1.0, activation: LinearOrLeaky = "linear") -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size
        self.stride, self.padding = stride, kernel_size // 2 if padding is None else padding
        self._init((out_channels, in_channels, kernel_size, kernel_size), in_channels * kernel_size ** 2, bias,
                   bias_init, lr_multiplier, gain, activation)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"EqualConv2d expects (B, {self.in_channels}, H, W), got {tuple(x.shape)}")
        y = F.conv2d(x, self.effective_weight(), stride=self.stride, padding=self.padding)
        return bias_act(y, self.effective_bias(), self.activation)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, bias={self.bias is not None}, activation={self.activation}")
