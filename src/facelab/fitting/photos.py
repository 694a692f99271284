"""Fit targets of real photos: face crops with mediapipe landmarks -> :class:`~facelab.fitting.FitTargets`.

The photometric term compares skin only: the convex hull of mediapipe's 478 points (SMIRK's face mask) without the
eyes and the lips, whose colours no skin albedo explains (Deep3DFaceRecon weights its photometric loss with a skin
attention mask for the same reason). Detection and cropping are :class:`facelab.cli.reconstruct.FaceCropper`
(MTCNN + mediapipe, as ``facelab reconstruct`` and ``facelab preprocess``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from facelab.fitting.fitter import FitTargets
from facelab.masks import convex_hull_mask

__all__ = ["MP_LEFT_EYE", "MP_LIPS", "MP_RIGHT_EYE", "photo_targets", "skin_mask"]

#: mediapipe eye contours (lids) and the outer lip contour: holes of the skin mask.
MP_RIGHT_EYE = (33, 7, 163, 144, 145, 153, 154, 155, 133, 173, 157, 158, 159, 160, 161, 246)
MP_LEFT_EYE = (362, 382, 381, 380, 374, 373, 390, 249, 263, 466, 388, 387, 386, 385, 384, 398)
MP_LIPS = (61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291, 409, 270, 269, 267, 0, 37, 39, 40, 185)


def skin_mask(landmarks_mp: Tensor, size: tuple[int, int]) -> Tensor:
    """Skin pixels of faces: the hull of the mediapipe landmarks minus the hulls of the eyes and the lips.

    Args:
        landmarks_mp: (B, 478, 2) mediapipe landmarks in pixels (468 without irises also works).
        size: ``(H, W)`` of the mask.

    Returns:
        (B, 1, H, W) float mask in {0, 1}.
    """
    if landmarks_mp.dim() != 3 or landmarks_mp.shape[1] not in (468, 478) or landmarks_mp.shape[2] != 2:
        raise ValueError(f"expected mediapipe landmarks (B, 478, 2), got {tuple(landmarks_mp.shape)}")
    face = convex_hull_mask(landmarks_mp, size)
    for part in (MP_RIGHT_EYE, MP_LEFT_EYE, MP_LIPS):
        face = face * (1.0 - convex_hull_mask(landmarks_mp[:, list(part)], size))
    return face


def photo_targets(images: Tensor, landmarks_mp: Tensor, landmarks68: Tensor | None = None,
                  landmarks68_weights: Tensor | None = None) -> FitTargets:
    """Targets of photo crops for :meth:`facelab.fitting.MorphableFitter.fit`.

    Args:
        images: (B, 3, H, W) crops in [0, 1] (or (B, H, W, 3) uint8).
        landmarks_mp: (B, 478, 2) mediapipe landmarks in crop pixels.
        landmarks68: (B, 68, 2) iBUG landmarks in crop pixels (e.g. FAN); None derives them from mediapipe.
        landmarks68_weights: (B, 68) their confidences.

    Returns:
        :class:`FitTargets` with the images, both landmark sets and the :func:`skin_mask`.
    """
    if images.dim() == 4 and images.shape[-1] == 3 and images.dtype == torch.uint8:
        images = images.permute(0, 3, 1, 2).float() / 255.0
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"expected images (B, 3, H, W) in [0, 1] or (B, H, W, 3) uint8, got {tuple(images.shape)}")
    size = tuple(images.shape[-2:])
    landmarks_mp = landmarks_mp.to(images)
    return FitTargets(image_size=size, landmarks68=None if landmarks68 is None else landmarks68.to(images),
                      landmarks68_weights=landmarks68_weights, landmarks_mp=landmarks_mp, image=images,
                      mask=skin_mask(landmarks_mp, size))
