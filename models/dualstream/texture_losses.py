"""The texture stream's losses (DualStream §III-B3, Eq. 15-18) and their weights.

Reconstructed equations (the OCR lost the formulas; the text and the surviving symbols fix them):

* Eq. 15, pixel reconstruction: ``L_rec = 1 / (W H C) sum ||Î_a - I_a||_2^2`` ("the discrepancy of the dense pixel
  values ... W, H and C refer to the size of images"), averaged here over the texels that have ground truth
  (the UV chart; for photos the visible texels), :func:`reconstruction_loss`.
* Eq. 16, adversarial: ``L_adv = log D(I_a) + log(1 - D(Î_a))`` with a PatchGAN ``D`` (pix2pix, whose recipe the
  paper follows for this stage: the discriminator sees the albedo map it is conditioned on, ``[I_ua, I_a]`` vs
  ``[I_ua, Î_a]``); the generator takes the non-saturating form ``-log D(Î_a)``
  (:func:`facelab.losses.generator_loss`), the discriminator the binary cross-entropy of both
  (:func:`facelab.losses.discriminator_loss`).
* Eq. 17, contextual: ``L_con = -log CX(phi^l(Î_a), phi^l(I_a))`` on VGG19 ``relu2_2`` up to ``relu4_2`` (the OCR
  kept "(Ta)" and "(La)": generated and true albedo map), :class:`facelab.losses.ContextualLoss` (Mechrez et al.
  2018). Its similarity matrix grows with ``(HW)^2``: the maps are resized to ``contextual_size`` (128: relu2_2 is
  64^2 = 4096 positions, the bound) and the texels without ground truth are zeroed in both.
* Eq. 18, total: ``L_ts = w_r L_rec + w_c L_con + w_a L_adv`` with ``w_r, w_c, w_a = 0.1, 3, 0.2``
  (:class:`TextureLossWeights`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from facelab.log import get_logger, warn_missing_weights
from facelab.losses import ContextualLoss, masked_mean
from facelab.losses.perceptual import VGGFeatures

__all__ = ["ContextualTextureLoss", "TextureLossWeights", "reconstruction_loss"]

log = get_logger(__name__)

#: VGG19 layers of DualStream's contextual loss ("relu2_2 up to relu4_2").
CONTEXTUAL_LAYERS = ("relu2_2", "relu3_2", "relu4_2")


@dataclass
class TextureLossWeights:
    """Eq. 18's weights (paper: 0.1, 3, 0.2).

    Attributes:
        reconstruction: ``w_r`` of the L2 reconstruction (Eq. 15).
        contextual: ``w_c`` of the contextual loss (Eq. 17).
        adversarial: ``w_a`` of the PatchGAN generator loss (Eq. 16).
    """

    reconstruction: float = 0.1
    contextual: float = 3.0
    adversarial: float = 0.2


def reconstruction_loss(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Eq. 15: mean squared error over the texels with ground truth.

    Args:
        pred, target: (B, 3, S, S). mask: (B, 1, S, S) in [0, 1].

    Returns:
        Scalar.
    """
    if pred.shape != target.shape or mask.shape[0] != pred.shape[0] or mask.shape[2:] != pred.shape[2:]:
        raise ValueError(f"pred {tuple(pred.shape)}, target {tuple(target.shape)} and mask {tuple(mask.shape)} "
                         "must be (B, 3, S, S), (B, 3, S, S), (B, 1, S, S)")
    return masked_mean((pred - target) ** 2, mask.expand_as(pred))


class ContextualTextureLoss(nn.Module):
    """Eq. 17 on albedo maps: masked, resized to ``size``, through frozen VGG19 relu2_2..relu4_2.

    Args:
        vgg_weights: torchvision ``vgg19`` state dict (``vgg19-dcbb9e9d.pth``). Missing: a console WARNING naming
            ``config_key`` and a frozen *random* VGG19 (the term still runs, on random features: much weaker style
            matching) — never a silently zeroed loss.
        size: side the maps are resized to before VGG (128: relu2_2 maps of 64^2, the contextual loss' bound).
        bandwidth: ``h`` (0.5).
        config_key: the YAML key named in the warning.
        feature_extractor: inject a feature network instead (tests).
    """

    def __init__(self, vgg_weights: str | None = None, size: int = 128, bandwidth: float = 0.5,
                 config_key: str = "model.init_args.vgg_weights", feature_extractor: nn.Module | None = None) -> None:
        super().__init__()
        if feature_extractor is None:
            if vgg_weights is None:
                warn_missing_weights(config_key, "VGG19 (DualStream contextual loss, relu2_2..relu4_2)",
                                     "the contextual loss runs on a frozen randomly initialised VGG19, whose features "
                                     "carry little of the skin style the term should transfer", logger=__name__)
            feature_extractor = VGGFeatures("vgg19", CONTEXTUAL_LAYERS, vgg_weights, allow_random=vgg_weights is None,
                                            what="DualStream contextual loss")
        self.size = int(size)
        self.loss = ContextualLoss(feature_extractor, bandwidth=bandwidth)

    def forward(self, pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
        """pred, target: (B, 3, S, S) in [0, 1]; mask: (B, 1, S, S). Returns a scalar."""
        pred, target = pred * mask, target * mask
        if pred.shape[-1] != self.size or pred.shape[-2] != self.size:
            pred = F.interpolate(pred, size=(self.size, self.size), mode="bilinear", align_corners=False,
                                 antialias=True)
            target = F.interpolate(target, size=(self.size, self.size), mode="bilinear", align_corners=False,
                                   antialias=True)
        return self.loss(pred, target)
