"""The losses of FaceDet3D's rendering network R (paper §3.3.1, Eq. 14-19).

* Photometric: masked L1 between the render of the image's own geometry and details and the image.
* Augmented Wrinkle Loss (AugW, Eq. 14-15): the image re-lit with "fake" details of another face,
  ``I*_x = Shading*(I_x) x I_x / Shading(I_x)``, must be reproduced by R given the fake details; the texture (and so
  the neural texture) holds no trace of them, so R has to take them from the geometry. Laplacian pyramid loss.
* Detailed Shading Loss (DSL, Eq. 16): a two-layer CNN f_theta predicts the detailed shading from the render; the
  Laplacian loss against ``Shading*`` on the skin region forces the details to be visible in the render.
* Expression adversarial loss (Eq. 17-19): a U-Net discriminator on RGB (global + per-pixel realism) with an AU
  head; non-saturating loss with R1 on reals (:mod:`facelab.losses.adversarial`), AU regression on reals for D
  (Eq. 18) and on renders for R (Eq. 19).

Shapes: ``B`` batch, ``H, W`` image, ``A`` action units.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from facelab.losses import laplacian_pyramid_loss, photometric_loss
from facelab.nn import UNetDiscriminatorOutput

__all__ = [
    "RenderLossWeights",
    "ShadingPredictor",
    "au_loss",
    "augmented_image",
    "augmented_wrinkle_loss",
    "detailed_shading_loss",
    "discriminator_logits",
    "render_photometric_loss",
]


@dataclass
class RenderLossWeights:
    """Weights of R's loss terms (names are the ``train/loss_<name>`` scalars; 0 switches a term off).

    The paper defers its weights to the supplementary; defaults follow GANimation-style recipes: reconstruction
    terms at 1-10, the adversarial term at 0.1-1, AU regression at 1 (its MSE is small: AUs lie in [0, 1]).

    Attributes:
        photometric: masked L1 of the render vs the image.
        augw: Augmented Wrinkle Loss (Eq. 15).
        dsl: Detailed Shading Loss (Eq. 16).
        adversarial: R's non-saturating term (Eq. 17).
        au: R's AU term on its renders (Eq. 19).
        d_adversarial: D's non-saturating term.
        d_au: D's AU term on real images (Eq. 18).
        r1: D's R1 penalty (the gamma lives in :class:`facelab.losses.LazyR1`; this multiplies it).
    """

    photometric: float = 10.0
    augw: float = 10.0
    dsl: float = 5.0
    adversarial: float = 0.1
    au: float = 1.0
    d_adversarial: float = 1.0
    d_au: float = 1.0
    r1: float = 1.0


def render_photometric_loss(render: Tensor, image: Tensor, mask: Tensor) -> Tensor:
    """Masked L1 of a (B, 3, H, W) render vs the image over the (B, 1, H, W) face region."""
    return photometric_loss(render, image, mask, norm="l1")


def augmented_image(image: Tensor, shading: Tensor, shading_fake: Tensor, mask: Tensor, eps: float = 0.05) -> Tensor:
    """``I*_x = Shading*(I_x) x I_x / Shading(I_x)`` (paper Eq. 14): the image with its details swapped.

    Args:
        image: (B, 3, H, W) I_x.
        shading: (B, 3, H, W) ``L_Sph(G_D, l)``, SH shading (9 bands) of the image's own detailed geometry.
        shading_fake: (B, 3, H, W) ``L_Sph(G_D*, l)``, the same with the fake details.
        mask: (B, 1, H, W) face region; outside it (and where ``shading <= eps``, deep shadow whose ratio is noise)
            the image is kept.
        eps: smallest shading divided by.

    Returns:
        (B, 3, H, W). Exactly ``image`` when ``shading_fake == shading``.
    """
    valid = (shading > eps) & (mask > 0.5)
    ratio = torch.where(valid, shading_fake / shading.clamp(min=eps), torch.ones_like(shading))
    return image * ratio


def augmented_wrinkle_loss(render_fake: Tensor, image_fake: Tensor, mask: Tensor, levels: int = 4) -> Tensor:
    """``L_AugW = LapLoss(R(T, G_D*, x, c, l), I*_x)`` (paper Eq. 15) over the face region."""
    return laplacian_pyramid_loss(render_fake, image_fake, levels, mask)


class ShadingPredictor(nn.Module):
    """f_theta of the Detailed Shading Loss (paper Eq. 16): a CNN of two layers, image -> shading.

    Its small receptive field and capacity mean it can only read shading that is plainly visible in the render.

    Args:
        hidden: channels of the hidden layer.
        kernel_size: both layers' kernel.

    Shapes:
        (B, 3, H, W) -> (B, 3, H, W).
    """

    def __init__(self, hidden: int = 16, kernel_size: int = 3) -> None:
        super().__init__()
        pad = kernel_size // 2
        self.net = nn.Sequential(nn.Conv2d(3, hidden, kernel_size, padding=pad), nn.LeakyReLU(0.2),
                                 nn.Conv2d(hidden, 3, kernel_size, padding=pad))

    def forward(self, image: Tensor) -> Tensor:
        return self.net(image)


def detailed_shading_loss(predictor: ShadingPredictor, render: Tensor, shading_target: Tensor, skin_mask: Tensor,
                          levels: int = 4) -> Tensor:
    """``L_DSL = LapLoss(f_theta(I_hat), Shading*)`` (paper Eq. 16) on the skin region only.

    Args:
        predictor: f_theta.
        render: (B, 3, H, W) R's render with the detailed geometry whose shading is the target.
        shading_target: (B, 3, H, W) that geometry's SH shading (Eq. 14).
        skin_mask: (B, 1, H, W) skin pixels (eyes, lips, background and occluders out).
    """
    return laplacian_pyramid_loss(predictor(render), shading_target, levels, skin_mask)


def discriminator_logits(out: UNetDiscriminatorOutput) -> list[Tensor]:
    """The realism logits of the U-Net discriminator: the global one and the per-pixel map (Schönfeld et al. 2020
    sum both losses)."""
    return [out.global_logit, out.pixel_logits]


def au_loss(predicted: Tensor, target: Tensor) -> Tensor:
    """``E ||AU_hat - AU||_2^2`` (paper Eq. 18-19): (B, A) vs (B, A), summed over AUs, averaged over the batch."""
    return (predicted - target.to(predicted)).square().sum(dim=1).mean()
