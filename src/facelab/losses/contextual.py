"""The contextual loss (Mechrez, Talmi & Zelnik-Manor 2018, "The contextual loss for image transformation with
non-aligned data", §3): matches the *statistics* of feature sets, not their positions (DualStream's
texture-stream ``L_con``).

For feature sets ``X = {x_i}`` (N positions of the prediction) and ``Y = {y_j}`` (M positions of the target):

* centre both on Y's mean and take cosine distances ``d_ij = 1 - cos(x_i - mu_y, y_j - mu_y)``;
* relative distances ``d~_ij = d_ij / (min_k d_ik + eps)``;
* similarities ``w_ij = exp((1 - d~_ij) / h)`` and their normalisation ``CX_ij = w_ij / sum_k w_ik``
  (a softmax over ``j``);
* ``CX(X, Y) = 1/M sum_j max_i CX_ij`` and the loss ``-log CX(X, Y)``.

The similarity matrix is (N, M) per sample, so memory grows with ``(HW)^2``: maps with more than
``max_positions`` positions are refused with a ``ValueError`` (DualStream uses it on <= 64^2 maps).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from facelab.losses.base import FrozenNetwork
from facelab.losses.perceptual import VGGArch, VGGFeatures

__all__ = ["ContextualLoss", "contextual_loss", "contextual_similarity"]

#: 64 x 64 positions: a (4096, 4096) float32 similarity matrix is 64 MiB per sample (and a few of them for autograd).
DEFAULT_MAX_POSITIONS = 64 * 64


def _check_size(x: Tensor, y: Tensor, max_positions: int) -> None:
    if x.dim() != 4 or y.dim() != 4 or x.shape[:2] != y.shape[:2]:
        raise ValueError(f"expected feature maps (B, C, H, W) with one B and C, got {tuple(x.shape)} and "
                         f"{tuple(y.shape)}")
    n, m = x.shape[2] * x.shape[3], y.shape[2] * y.shape[3]
    if max(n, m) > max_positions:
        mib = x.shape[0] * n * m * x.element_size() / 2**20
        raise ValueError(f"contextual loss on {tuple(x.shape[2:])} and {tuple(y.shape[2:])} feature maps needs a "
                         f"{n} x {m} similarity matrix per sample ({mib:.0f} MiB for the batch of {x.shape[0]}, "
                         f"several times that with gradients); the limit is max_positions={max_positions}: "
                         "downsample the input, tap deeper layers or raise max_positions")


def contextual_similarity(x: Tensor, y: Tensor, bandwidth: float = 0.5, eps: float = 1e-5) -> Tensor:
    """``CX(X, Y)`` per sample (Mechrez et al. 2018, §3).

    Args:
        x: (B, C, H, W) prediction features (N = H W positions). y: (B, C, H', W') target features (M positions).
        bandwidth: ``h`` (0.5 in DualStream; Mechrez et al. use 0.1-0.5).
        eps: the relative-distance epsilon (1e-5).

    Returns:
        (B,) in (0, 1].
    """
    mu = y.flatten(2).mean(dim=2, keepdim=True)  # (B, C, 1): Y's mean feature
    xc = F.normalize(x.flatten(2) - mu, dim=1)  # (B, C, N)
    yc = F.normalize(y.flatten(2) - mu, dim=1)  # (B, C, M)
    dist = 1.0 - xc.transpose(1, 2) @ yc  # (B, N, M): d_ij
    rel = dist / (dist.min(dim=2, keepdim=True).values + eps)  # relative distance
    cx = torch.softmax((1.0 - rel) / bandwidth, dim=2)  # w_ij / sum_k w_ik
    return cx.max(dim=1).values.mean(dim=1)  # mean_j max_i


def contextual_loss(x: Tensor, y: Tensor, bandwidth: float = 0.5, eps: float = 1e-5,
                    max_positions: int = DEFAULT_MAX_POSITIONS) -> Tensor:
    """``mean_b -log CX(X_b, Y_b)`` (Mechrez et al. 2018) on one pair of feature maps.

    Args:
        x: (B, C, H, W) prediction features. y: (B, C, H', W') target features.
        bandwidth: ``h``. eps: relative-distance epsilon.
        max_positions: refuse maps with more positions (ValueError with the sizes).

    Returns:
        Scalar >= 0 (0 when every target feature has an identical prediction feature).
    """
    _check_size(x, y, max_positions)
    return -torch.log(contextual_similarity(x, y.to(x), bandwidth, eps)).mean()


class ContextualLoss(FrozenNetwork):
    """``sum_l w_l CX_loss(phi_l(pred), phi_l(target))`` over the layers of a frozen feature extractor.

    Args:
        feature_extractor: maps (B, C, H, W) images to one feature map or a list of them (e.g. a tiny conv net or
            ``nn.Identity`` in tests); frozen here. None: :class:`~facelab.losses.perceptual.VGGFeatures` of
            ``arch`` / ``layers`` from ``weights_path``.
        weights_path: torchvision VGG state dict for the default extractor.
        allow_random: permit random VGG weights (console WARNING; tests only).
        arch: ``"vgg19"`` (Mechrez et al., DualStream) or ``"vgg16"``.
        layers: VGG layers (DualStream: relu2_2 up to relu4_2).
        layer_weights: one per extracted map (default 1 each).
        bandwidth: ``h`` (0.5). eps: relative-distance epsilon (1e-5).
        max_positions: the largest feature map (H W positions) accepted (4096 = 64^2).
        detach_target: the target's features carry no gradient.
    """

    def __init__(self, feature_extractor: nn.Module | None = None, weights_path: str | None = None,
                 allow_random: bool = False, arch: VGGArch = "vgg19",
                 layers: Sequence[str] = ("relu2_2", "relu3_2", "relu4_2"),
                 layer_weights: Sequence[float] | None = None, bandwidth: float = 0.5, eps: float = 1e-5,
                 max_positions: int = DEFAULT_MAX_POSITIONS, detach_target: bool = True) -> None:
        super().__init__()
        if bandwidth <= 0:
            raise ValueError(f"bandwidth must be > 0, got {bandwidth}")
        if feature_extractor is None:
            feature_extractor = VGGFeatures(arch, layers, weights_path, allow_random, what=type(self).__name__)
        self.features = feature_extractor
        self.layer_weights = None if layer_weights is None else list(layer_weights)
        self.bandwidth, self.eps, self.max_positions = bandwidth, eps, max_positions
        self.detach_target = detach_target
        self.freeze()

    def _extract(self, image: Tensor) -> list[Tensor]:
        feats = self.features(image)
        return [feats] if isinstance(feats, Tensor) else list(feats)

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        """pred: (B, C, H, W). target: (B, C, H', W') (need not be aligned with ``pred``). Returns a scalar."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.detach_target):
            target_feats = self._extract(target)
        pred_feats = self._extract(pred)
        weights = self.layer_weights or [1.0] * len(pred_feats)
        if len(weights) != len(pred_feats):
            raise ValueError(f"{len(weights)} layer weights for {len(pred_feats)} feature maps")
        return sum(w * contextual_loss(p, t, self.bandwidth, self.eps, self.max_positions)
                   for w, p, t in zip(weights, pred_feats, target_feats))
