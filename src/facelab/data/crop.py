"""Face crops as similarity warps: crop parameters from a box or landmarks, the warp, its inverse, points.

A crop is a 2x3 matrix ``M`` (a similarity: uniform scale, rotation, translation) that maps *source* pixel
coordinates to *crop* pixel coordinates, ``[u', v'] = M @ [u, v, 1]``. Pixel coordinates follow the ``pix``
convention of :mod:`facelab.render.camera`: continuous, origin at the top-left *corner*, +v down, pixel centres at
half-integers. Landmarks, boxes, crops and their inverse all use the same ``M``, so a point and the image content
under it always move together.

SMIRK's crop (and :func:`crop_params` on landmarks): the bounding box of the landmarks, a square of side
``mean(w, h) * scale`` around its centre (scale ~ U[1.2, 1.8] when training, 1.6 at test), resampled to 224x224.
Normalized crop coordinates (SMIRK's landmark convention) are ``2 * pix / size - 1`` on both axes: ``[-1, 1]``
from the left/top edge to the right/bottom edge, +y *down* (the render NDC of :mod:`facelab.render.camera` has
+y up: ``y_ndc = -y``).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from kornia.filters import gaussian_blur2d
from kornia.geometry.transform import warp_affine
from torch import Tensor

__all__ = [
    "FIVE_POINT_FACE_SIZE",
    "crop_matrix",
    "crop_params",
    "crop_uint8",
    "invert_affine",
    "mesh_landmarks_in_box",
    "normalize_points",
    "paste_back",
    "transform_points",
    "unnormalize_points",
    "warp_crop",
]

#: The loose crop a face-mesh landmarker sees around a detection box (scale of the box, side in pixels).
MESH_CROP_SCALE, MESH_CROP_SIZE = 2.0, 256

#: Face size (mean of box width and height) per unit distance between the eye midpoint and the mouth midpoint, used
#: when a crop is computed from MTCNN's 5 points (MTCNN's own box on skimage's astronaut: 98.4 px for 37.9 px).
FIVE_POINT_FACE_SIZE = 2.6

# Eye index groups (image-left eye, image-right eye) per landmark layout, for the eye-line rotation.
_EYES = {
    5: ([0], [1]),  # MTCNN: left eye, right eye
    68: (list(range(36, 42)), list(range(42, 48))),  # iBUG 68 (FAN)
    468: ([33, 133], [362, 263]),  # mediapipe face mesh eye corners
    478: ([33, 133], [362, 263]),  # mediapipe with refined irises
}


def crop_matrix(center: Tensor, size: Tensor, out_size: int, angle: Tensor | None = None) -> Tensor:
    """The similarity that maps a square of side ``size`` around ``center`` onto an ``out_size`` crop.

    Args:
        center: (..., 2) square centre in source pixels.
        size: (...) square side in source pixels.
        out_size: crop side in pixels.
        angle: (...) counter-clockwise-on-screen tilt of the face in radians (the eye line's angle from +u
            measured with +v down); the crop is rotated so that this line becomes horizontal. None: no rotation.

    Returns:
        (..., 2, 3) source-to-crop matrix.
    """
    s = out_size / size
    angle = torch.zeros_like(s) if angle is None else angle
    cos, sin = torch.cos(angle) * s, torch.sin(angle) * s
    # rotate by -angle: [[cos, sin], [-sin, cos]] (image axes, +v down)
    lin = torch.stack([torch.stack([cos, sin], -1), torch.stack([-sin, cos], -1)], -2)
    t = out_size / 2 - (lin @ center.unsqueeze(-1)).squeeze(-1)
    return torch.cat([lin, t.unsqueeze(-1)], -1)


def crop_params(source: Tensor, scale: float | Tensor = 1.6, out_size: int = 224, rotate: bool = False) -> Tensor:
    """Crop matrix from a face box, MTCNN's 5 points or a landmark set.

    * box ``(..., 4)`` ``[u0, v0, u1, v1]``: centre of the box, side ``mean(w, h) * scale``;
    * 5 points ``(..., 5, 2)``: centre halfway between the eye midpoint and the mouth midpoint, side
      ``FIVE_POINT_FACE_SIZE * |eyes - mouth| * scale`` (about the size the box gives);
    * any other landmark set ``(..., L, 2)`` (mediapipe 478, FAN 68): SMIRK's rule, the landmarks' bounding box.

    Args:
        source: box (..., 4) or points (..., L, 2) in source pixels.
        scale: crop side relative to the face size; a float or a (...) tensor (per-sample jitter).
        out_size: crop side in pixels.
        rotate: level the eye line (needs 5, 68, 468 or 478 points).

    Returns:
        (..., 2, 3) source-to-crop matrix in ``source``'s dtype.
    """
    if source.shape[-1] == 4:
        if rotate:
            raise ValueError("rotate=True needs points to find the eye line, not a box")
        center = 0.5 * (source[..., :2] + source[..., 2:])
        size = 0.5 * ((source[..., 2] - source[..., 0]) + (source[..., 3] - source[..., 1]))
        angle = None
    elif source.ndim >= 2 and source.shape[-1] == 2:
        num = source.shape[-2]
        if num == 5:
            eyes, mouth = source[..., :2, :].mean(-2), source[..., 3:, :].mean(-2)
            center = 0.5 * (eyes + mouth)
            size = FIVE_POINT_FACE_SIZE * torch.linalg.vector_norm(eyes - mouth, dim=-1)
        else:
            lo, hi = source.amin(-2), source.amax(-2)
            center, size = 0.5 * (lo + hi), (hi - lo).mean(-1)
        angle = _eye_angle(source) if rotate else None
    else:
        raise ValueError(f"expected a box (..., 4) or points (..., L, 2), got {tuple(source.shape)}")
    scale = torch.as_tensor(scale, dtype=source.dtype, device=source.device)
    return crop_matrix(center, size * scale, out_size, angle)


def _eye_angle(points: Tensor) -> Tensor:
    num = points.shape[-2]
    if num not in _EYES:
        raise ValueError(f"rotate=True: no eye indices known for {num} landmarks (known: {sorted(_EYES)})")
    left, right = _EYES[num]
    d = points[..., right, :].mean(-2) - points[..., left, :].mean(-2)
    return torch.atan2(d[..., 1], d[..., 0])


def invert_affine(matrix: Tensor) -> Tensor:
    """Inverse of a (..., 2, 3) affine matrix (crop-to-source for a crop matrix)."""
    lin_inv = torch.linalg.inv(matrix[..., :2])
    return torch.cat([lin_inv, -(lin_inv @ matrix[..., 2:])], -1)


def transform_points(points: Tensor, matrix: Tensor) -> Tensor:
    """Apply a (..., 2, 3) affine matrix to (..., L, 2) points (e.g. source landmarks to crop pixels)."""
    return points @ matrix[..., :2].transpose(-1, -2) + matrix[..., 2].unsqueeze(-2)


def _to_index_convention(matrix: Tensor) -> Tensor:
    """Re-express a pixel-corner-origin matrix in pixel-*index* coordinates (centres at integers, kornia/OpenCV)."""
    lin = matrix[..., :2]
    half = torch.full_like(matrix[..., 2], 0.5)
    t = matrix[..., 2] + (lin @ half.unsqueeze(-1)).squeeze(-1) - 0.5
    return torch.cat([lin, t.unsqueeze(-1)], -1)


def warp_crop(
    images: Tensor, matrix: Tensor, out_size: int | tuple[int, int], mode: str = "bilinear", antialias: bool = True
) -> Tensor:
    """Resample crops from source images.

    Args:
        images: (B, C, H, W) float source images.
        matrix: (B, 2, 3) source-to-crop matrices.
        out_size: crop side, or ``(H_out, W_out)``.
        mode: ``"bilinear"`` or ``"nearest"`` (masks, labels).
        antialias: when a crop shrinks the source (scale < 1), low-pass it first with a Gaussian of
            ``sigma = (1 / scale - 1) / 2`` pixels so that large faces do not alias.

    Returns:
        (B, C, H_out, W_out) crops; outside the source is 0.
    """
    if images.ndim != 4 or matrix.shape != (images.shape[0], 2, 3):
        raise ValueError(f"expected images (B, C, H, W) and matrix (B, 2, 3), got {images.shape}, {matrix.shape}")
    h_out, w_out = (out_size, out_size) if isinstance(out_size, int) else out_size
    matrix = matrix.to(images.dtype)
    if antialias and mode == "bilinear":
        images = _antialias(images, matrix)
    return warp_affine(images, _to_index_convention(matrix), (h_out, w_out), mode=mode, align_corners=True)


def _antialias(images: Tensor, matrix: Tensor) -> Tensor:
    scale = torch.linalg.det(matrix[:, :, :2]).abs().sqrt()
    sigma = ((1.0 / scale - 1.0) / 2.0).clamp(min=0.0)
    if float(sigma.max()) < 0.25:
        return images
    ksize = 2 * math.ceil(3.0 * float(sigma.max())) + 1
    sigma = sigma.clamp(min=1e-3).unsqueeze(-1).expand(-1, 2)
    return gaussian_blur2d(images, (ksize, ksize), sigma, border_type="replicate")


def paste_back(
    crops: Tensor, matrix: Tensor, image_size: tuple[int, int], mode: str = "bilinear"
) -> tuple[Tensor, Tensor]:
    """Warp crops back into source-image space (the inverse of :func:`warp_crop`).

    Args:
        crops: (B, C, S, S) crop-space images (e.g. a rendered reconstruction).
        matrix: (B, 2, 3) source-to-crop matrices the crops were made with.
        image_size: ``(H, W)`` of the source images.
        mode: ``"bilinear"`` or ``"nearest"``.

    Returns:
        ``(pasted, coverage)``: (B, C, H, W) the crops in source space (0 outside them) and (B, 1, H, W) in [0, 1],
        the fraction of each source pixel covered by the crop (for blending: ``out = pasted + (1 - cov) * image``).
    """
    inv = invert_affine(matrix.to(crops.dtype))
    pasted = warp_crop(crops, inv, image_size, mode=mode)
    ones = torch.ones_like(crops[:, :1])
    coverage = warp_crop(ones, inv, image_size, mode="bilinear", antialias=False)
    return pasted, coverage


def normalize_points(points_pix: Tensor, size: int | tuple[int, int]) -> Tensor:
    """Crop pixels (..., L, 2) to SMIRK's normalized crop coordinates ``2 * pix / size - 1`` (+y down)."""
    h, w = (size, size) if isinstance(size, int) else size
    scale = points_pix.new_tensor([w, h])
    return 2.0 * points_pix / scale - 1.0


def unnormalize_points(points: Tensor, size: int | tuple[int, int]) -> Tensor:
    """Inverse of :func:`normalize_points`: (..., L, 2) normalized crop coordinates to crop pixels."""
    h, w = (size, size) if isinstance(size, int) else size
    scale = points.new_tensor([w, h])
    return (points + 1.0) * 0.5 * scale


def crop_uint8(src: Tensor, matrix: Tensor, size: int) -> np.ndarray:
    """Warp one image into a crop and return it as an (size, size, 3) uint8 RGB array.

    Args:
        src: (1, 3, H, W) float image with values in 0..255 (float64 keeps the warp exact).
        matrix: (2, 3) crop matrix (source pixels -> crop pixels).
        size: crop side.
    """
    out = warp_crop(src, matrix[None].to(src), size)
    return out[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).contiguous().numpy()


def mesh_landmarks_in_box(src: Tensor, box: Tensor, landmarker) -> Tensor:
    """Face-mesh landmarks (e.g. mediapipe's 478) of the face in a detection box, in source-image pixels.

    The landmarker sees a loose crop (:data:`MESH_CROP_SCALE` x the box, :data:`MESH_CROP_SIZE` px) and its points
    are mapped back through the inverse warp. The mesh must be the detected face: the centre of its bounding box has
    to lie inside ``box`` (a neighbouring face in the loose crop is refused).

    Args:
        src: (1, 3, H, W) float64 image, values 0..255.
        box: (4,) ``[u0, v0, u1, v1]`` detection box in pixels.
        landmarker: callable (h, w, 3) uint8 RGB -> (N, 2) pixel points or None (no mesh found).

    Returns:
        (N, 2) float64 points in source pixels.

    Raises:
        DataError: ``no_landmarks`` (the landmarker found nothing) or ``landmarks_mismatch`` (another face).
    """
    from facelab.data.image_io import DataError

    box = torch.as_tensor(box, dtype=torch.float64)
    loose = crop_params(box, MESH_CROP_SCALE, MESH_CROP_SIZE)
    points = landmarker(crop_uint8(src, loose, MESH_CROP_SIZE))
    if points is None:
        raise DataError("no_landmarks", "mediapipe found no face mesh in the detected face")
    points = transform_points(torch.from_numpy(np.asarray(points, np.float64)), invert_affine(loose))
    centre = 0.5 * (points.amin(0) + points.amax(0))
    if not (box[0] <= centre[0] <= box[2] and box[1] <= centre[1] <= box[3]):
        raise DataError("landmarks_mismatch", "mediapipe's face is not the detected face (neighbouring face?)")
    return points
