"""Feature modulation by a condition vector: AdaIN, FiLM and the StarGAN-v2 AdaIN residual block.

- AdaIN (Huang & Belongie 2017, "Arbitrary Style Transfer in Real-time with Adaptive Instance Normalization"), in
  the form StarGAN v2 uses (Choi et al. 2020, "StarGAN v2: Diverse Image Synthesis for Multiple Domains", CVPR):
  instance norm without affine parameters, a linear map (or MLP) from the condition to per-channel
  ``(gamma, beta)``, ``out = (1 + gamma) * IN(x) + beta``. FaceDet3D's DetH decoder is AdaIN-modulated by the target
  action units (FaceDet3D §3.2).
- FiLM (Perez et al. 2018, "FiLM: Visual Reasoning with a General Conditioning Layer"): the same per-channel affine
  map without the normalisation, ``out = (1 + gamma) * x + beta``.

Both modules have the signature ``Module(num_features, condition_dim)`` and are called as ``module(x, condition)``,
so either class can be passed as the per-level conditioning hook of :class:`facelab.nn.UNet`.

Shapes: ``B`` batch, ``C`` channels, ``H, W`` spatial size, ``D`` condition size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from facelab.nn.blocks import Activation, activation_layer

__all__ = ["AdaIN", "AdaINResBlock", "FiLM", "adain", "condition_mlp"]


def adain(x: Tensor, gamma: Tensor, beta: Tensor, eps: float = 1e-5) -> Tensor:
    """Adaptive instance normalisation ``(1 + gamma) * IN(x) + beta`` (StarGAN v2's AdaIN).

    ``IN(x)`` normalises each sample and channel over H, W to zero mean and unit (biased) variance, so the output
    has per-(sample, channel) mean ``beta`` and standard deviation ``|1 + gamma|`` (up to ``eps``).

    Args:
        x: (B, C, H, W) features.
        gamma: (B, C) scale offsets (0 keeps the normalised features' scale).
        beta: (B, C) shifts.
        eps: added to the variance.

    Returns:
        (B, C, H, W).
    """
    if x.dim() != 4 or gamma.shape != x.shape[:2] or beta.shape != x.shape[:2]:
        raise ValueError(f"adain expects x (B, C, H, W) with gamma and beta (B, C); got x {tuple(x.shape)}, "
                         f"gamma {tuple(gamma.shape)}, beta {tuple(beta.shape)}")
    normalized = F.instance_norm(x, eps=eps)
    return (1 + gamma[..., None, None]) * normalized + beta[..., None, None]


def condition_mlp(condition_dim: int, out_features: int, hidden_dims: Sequence[int] = (),
                  activation: Activation = "relu") -> nn.Module:
    """Linear layers ``condition_dim -> *hidden_dims -> out_features`` with ``activation`` between them (a single
    ``nn.Linear`` when ``hidden_dims`` is empty)."""
    widths = [condition_dim, *hidden_dims, out_features]
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        if i:
            layers.append(activation_layer(activation))
        layers.append(nn.Linear(a, b))
    return layers[0] if len(layers) == 1 else nn.Sequential(*layers)


class _Modulation(nn.Module):
    """Shared part of :class:`AdaIN` and :class:`FiLM`: the condition -> (gamma, beta) map."""

    def __init__(self, num_features: int, condition_dim: int, hidden_dims: Sequence[int],
                 activation: Activation) -> None:
        super().__init__()
        if num_features <= 0 or condition_dim <= 0:
            raise ValueError(f"num_features and condition_dim must be positive, got {num_features}, {condition_dim}")
        self.num_features, self.condition_dim = num_features, condition_dim
        self.fc = condition_mlp(condition_dim, 2 * num_features, hidden_dims, activation)

    def gamma_beta(self, condition: Tensor) -> tuple[Tensor, Tensor]:
        """(B, D) condition -> ``(gamma, beta)``, each (B, C)."""
        if condition.dim() != 2 or condition.shape[1] != self.condition_dim:
            raise ValueError(f"{type(self).__name__} expects a (B, {self.condition_dim}) condition, "
                             f"got {tuple(condition.shape)}")
        gamma, beta = self.fc(condition).chunk(2, dim=1)
        return gamma, beta

    def _check(self, x: Tensor, condition: Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != self.num_features or x.shape[0] != condition.shape[0]:
            raise ValueError(f"{type(self).__name__} expects x (B, {self.num_features}, H, W) and condition "
                             f"(B, {self.condition_dim}); got {tuple(x.shape)} and {tuple(condition.shape)}")


class AdaIN(_Modulation):
    """Adaptive instance normalisation (StarGAN v2 form; see :func:`adain`).

    Args:
        num_features: channels ``C`` of the modulated features.
        condition_dim: size ``D`` of the condition vector (style code, target action units, ...).
        hidden_dims: hidden widths of the condition MLP; empty = one linear layer (StarGAN v2).
        activation: non-linearity between MLP layers.
        eps: instance-norm epsilon.

    Shapes:
        ``forward(x (B, C, H, W), condition (B, D)) -> (B, C, H, W)``.
    """

    def __init__(self, num_features: int, condition_dim: int, hidden_dims: Sequence[int] = (),
                 activation: Activation = "relu", eps: float = 1e-5) -> None:
        super().__init__(num_features, condition_dim, hidden_dims, activation)
        self.eps = eps

    def forward(self, x: Tensor, condition: Tensor) -> Tensor:
        self._check(x, condition)
        gamma, beta = self.gamma_beta(condition)
        return adain(x, gamma, beta, self.eps)


class FiLM(_Modulation):
    """Feature-wise linear modulation ``(1 + gamma) * x + beta`` (Perez et al. 2018), per channel.

    Args:
        num_features: channels ``C`` of the modulated features.
        condition_dim: size ``D`` of the condition vector.
        hidden_dims: hidden widths of the condition MLP; empty = one linear layer.
        activation: non-linearity between MLP layers.

    Shapes:
        ``forward(x (B, C, H, W), condition (B, D)) -> (B, C, H, W)``.
    """

    def __init__(self, num_features: int, condition_dim: int, hidden_dims: Sequence[int] = (),
                 activation: Activation = "relu") -> None:
        super().__init__(num_features, condition_dim, hidden_dims, activation)

    def forward(self, x: Tensor, condition: Tensor) -> Tensor:
        self._check(x, condition)
        gamma, beta = self.gamma_beta(condition)
        return (1 + gamma[..., None, None]) * x + beta[..., None, None]


class AdaINResBlock(nn.Module):
    """StarGAN v2's decoder block ``AdainResBlk`` (Choi et al. 2020, appendix A):

    ``residual = conv3x3(act(AdaIN(conv3x3(up?(act(AdaIN(x, s)))), s)))``, ``shortcut = conv1x1?(up?(x))`` (the
    learned 1x1 convolution, without bias, only when the width changes; ``up`` is nearest-neighbour x2), output
    ``(residual + shortcut) / sqrt(2)``.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        condition_dim: size ``D`` of the condition vector driving both AdaIN layers.
        upsample: double the spatial size.
        activation: non-linearity (StarGAN v2: LeakyReLU 0.2).
        hidden_dims: hidden widths of the AdaIN condition MLPs.

    Shapes:
        ``forward(x (B, in_channels, H, W), condition (B, D)) -> (B, out_channels, H', W')`` with ``H' = 2 H`` when
        ``upsample``, else ``H``.
    """

    def __init__(self, in_channels: int, out_channels: int, condition_dim: int, upsample: bool = False,
                 activation: Activation = "leaky_relu", hidden_dims: Sequence[int] = ()) -> None:
        super().__init__()
        self.upsample = upsample
        self.norm1 = AdaIN(in_channels, condition_dim, hidden_dims)
        self.norm2 = AdaIN(out_channels, condition_dim, hidden_dims)
        self.act = activation_layer(activation)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.shortcut = nn.Conv2d(in_channels, out_channels, 1, bias=False) if in_channels != out_channels else None

    def _up(self, x: Tensor) -> Tensor:
        return F.interpolate(x, scale_factor=2, mode="nearest") if self.upsample else x

    def forward(self, x: Tensor, condition: Tensor) -> Tensor:
        h = self.conv1(self._up(self.act(self.norm1(x, condition))))
        h = self.conv2(self.act(self.norm2(h, condition)))
        s = self._up(x)
        if self.shortcut is not None:
            s = self.shortcut(s)
        return (h + s) / math.sqrt(2.0)
