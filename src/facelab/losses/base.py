"""What the losses share: frozen pretrained networks, the random-weights decision, masked means, norms.

Frozen feature networks (VGG, LPIPS, FaceNet/ArcFace, a method's emotion net) load local weights only, stay in eval
mode with ``requires_grad=False`` parameters (so optimizers built from ``module.parameters()`` with a
``requires_grad`` filter skip them) and pass gradients to their *inputs*.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from facelab.log import warn_missing_weights

__all__ = ["FrozenNetwork", "Norm", "as_rgb", "elementwise_norm", "masked_mean", "require_weights_or_random"]

#: ``"l1"``: ``|d|``; ``"l2"``: ``d^2`` (squared error, as in MSE).
Norm = Literal["l1", "l2"]


class FrozenNetwork(nn.Module):
    """Base of the frozen feature networks: eval mode forever, parameters without gradients.

    Subclasses build their network, then call :meth:`freeze`. ``train()`` keeps them in eval mode (BatchNorm
    statistics and dropout stay fixed inside a training LightningModule).
    """

    def freeze(self) -> None:
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> FrozenNetwork:
        self.training = False
        for child in self.children():
            try:
                child.train(False)
            except NotImplementedError:  # a torch.export module: its mode was fixed when it was exported
                pass
        return self


def require_weights_or_random(weights_path: str | None, allow_random: bool, what: str, config_key: str,
                              logger: str = "facelab.losses") -> None:
    """The one decision about a missing weights path.

    ``weights_path`` given: nothing to decide (the file is read by the caller and fails loudly if absent).
    ``None`` without ``allow_random``: ``ValueError`` (the caller decides what to do: e.g. switch the loss off with
    :func:`facelab.log.warn_missing_weights`). ``None`` with ``allow_random``: random weights, and the console
    WARNING of :func:`facelab.log.warn_missing_weights` says so.

    Args:
        weights_path: the local weights file or None.
        allow_random: permit random weights (tests, timing).
        what: the network, e.g. ``"VGG16 (perceptual loss)"``.
        config_key: the argument holding the path, e.g. ``"weights_path"``.
        logger: the logger to warn on.
    """
    if weights_path is not None:
        return
    if not allow_random:
        raise ValueError(f"{what}: {config_key} is None; give the local weights file (nothing is downloaded), or "
                         "allow_random=True for tests (random features make the loss meaningless)")
    warn_missing_weights(config_key, what, "it runs with RANDOM weights (allow_random=True: only for tests): the "
                         "loss measures nothing meaningful", logger=logger)


def elementwise_norm(diff: Tensor, norm: Norm) -> Tensor:
    """``|diff|`` (``"l1"``) or ``diff^2`` (``"l2"``), same shape."""
    if norm == "l1":
        return diff.abs()
    if norm == "l2":
        return diff.square()
    raise ValueError(f"norm must be 'l1' or 'l2', got {norm!r}")


def masked_mean(values: Tensor, weight: Tensor | None = None) -> Tensor:
    """``sum(w * values) / sum(w)`` with ``w`` broadcast to ``values`` (its count over the broadcast dimensions
    included); plain mean when ``weight`` is None; 0 (still attached to ``values``) when every weight is 0.

    Args:
        values: any shape. weight: broadcastable to ``values``, non-negative (bool or float).
    """
    if weight is None:
        return values.mean()
    weight = weight.to(values.dtype).expand_as(values)
    total = weight.sum()
    return (values * weight).sum() / total.clamp(min=torch.finfo(values.dtype).tiny)


def as_rgb(image: Tensor) -> Tensor:
    """(B, 1|3, H, W) -> (B, 3, H, W): one-channel maps (displacement, depth, masks) are repeated to three channels
    for networks trained on RGB."""
    if image.dim() != 4 or image.shape[1] not in (1, 3):
        raise ValueError(f"expected (B, 1 or 3, H, W) images, got {tuple(image.shape)}")
    return image.expand(-1, 3, -1, -1) if image.shape[1] == 1 else image
