"""Training augmentations for face crops (kornia), applied consistently to image, masks and landmarks.

SMIRK augments its crops with brightness/contrast, gamma, colour jitter, blur, noise and a shift-scale-rotate
(±10°). :class:`FaceAugment` runs kornia's :class:`~kornia.augmentation.RandomAffine` through an
:class:`~kornia.augmentation.AugmentationSequential` with ``data_keys=["input", "mask", "keypoints"]`` so the very
same sampled transform moves the image, its masks and its landmarks; the photometric operations then touch the
image only. It works on batches on any device (run it on the GPU, after the batch is transferred).
"""

from __future__ import annotations

from collections.abc import Sequence

import kornia.augmentation as K
import torch
from torch import Tensor, nn

__all__ = ["FaceAugment"]


class FaceAugment(nn.Module):
    """Random shift-scale-rotate plus colour, gamma, blur and noise for face-crop batches.

    Landmarks are given and returned in SMIRK's normalized crop coordinates (``[-1, 1]`` across the crop, +y down;
    :func:`facelab.data.crop.normalize_points`); after a shift they may fall outside ``[-1, 1]``.

    Args:
        degrees: rotation range ±degrees (SMIRK: 10).
        translate: shift range as a fraction of the crop side.
        scale: zoom range.
        p_affine: probability of the geometric transform per sample.
        brightness: ColorJiggle brightness factor range ±.
        contrast: ColorJiggle contrast factor range ±.
        saturation: ColorJiggle saturation factor range ±.
        hue: ColorJiggle hue shift range ± (fraction of the hue circle, at most 0.5).
        p_color: probability of the colour jitter.
        gamma: gamma range.
        p_gamma: probability of the gamma change.
        blur_sigma: Gaussian blur sigma range in pixels.
        p_blur: probability of blurring.
        noise_std: standard deviation of additive Gaussian noise (images in [0, 1]).
        p_noise: probability of noise.
    """

    def __init__(
        self,
        degrees: float = 10.0,
        translate: float = 0.05,
        scale: tuple[float, float] = (0.9, 1.1),
        p_affine: float = 0.8,
        brightness: float = 0.2,
        contrast: float = 0.2,
        saturation: float = 0.2,
        hue: float = 0.02,
        p_color: float = 0.8,
        gamma: tuple[float, float] = (0.8, 1.25),
        p_gamma: float = 0.3,
        blur_sigma: tuple[float, float] = (0.1, 1.5),
        p_blur: float = 0.2,
        noise_std: float = 0.02,
        p_noise: float = 0.2,
    ):
        super().__init__()
        self.geometric = K.AugmentationSequential(
            K.RandomAffine(degrees=degrees, translate=(translate, translate), scale=scale, p=p_affine),
            data_keys=["input", "mask", "keypoints"],
        )
        kernel = 2 * int(round(3 * blur_sigma[1])) + 1
        self.photometric = nn.Sequential(
            K.ColorJiggle(brightness, contrast, saturation, hue, p=p_color),
            K.RandomGamma(gamma=gamma, p=p_gamma),
            K.RandomGaussianBlur((kernel, kernel), blur_sigma, p=p_blur),
            K.RandomGaussianNoise(mean=0.0, std=noise_std, p=p_noise),
        )

    def forward(
        self, image: Tensor, mask: Tensor | None = None, landmarks: Sequence[Tensor] = ()
    ) -> tuple[Tensor, Tensor | None, list[Tensor]]:
        """Augment a batch.

        Args:
            image: (B, 3, H, W) float in [0, 1].
            mask: (B, M, H, W) float masks (face mask, ...) or None.
            landmarks: any number of (B, L_k, 2) landmark sets in normalized crop coordinates.

        Returns:
            ``(image, mask, landmarks)``: (B, 3, H, W) in [0, 1], (B, M, H, W) or None, and the landmark sets.
        """
        if image.ndim != 4 or image.shape[1] != 3:
            raise ValueError(f"expected images (B, 3, H, W), got {tuple(image.shape)}")
        b, _, h, w = image.shape
        sizes = [lm.shape[1] for lm in landmarks]
        points = torch.cat([lm.to(image.dtype) for lm in landmarks], 1) if landmarks else image.new_zeros(b, 1, 2)
        # kornia keypoints are pixel *indices* (centres at integers); ours are normalized, corner-aligned
        half = points.new_tensor([w, h]) / 2
        points_idx = (points + 1) * half - 0.5
        mask_in = mask.to(image.dtype) if mask is not None else image.new_zeros(b, 1, h, w)
        image, mask_out, points_idx = self.geometric(image, mask_in, points_idx)
        image = self.photometric(image).clamp(0.0, 1.0)
        points = (points_idx + 0.5) / half - 1
        out_landmarks = list(torch.split(points, sizes, dim=1)) if landmarks else []
        out_landmarks = [o.to(lm.dtype) for o, lm in zip(out_landmarks, landmarks)]
        return image, (mask_out if mask is not None else None), out_landmarks
