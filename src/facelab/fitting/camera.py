"""Closed-form rigid pose from 2D-3D landmark correspondences, the initialisation of every fit.

Frames are those of :mod:`facelab.render.camera`: model / world frame +y up with the face along +z, NDC
``(x, y)`` in [-1, 1] with +y up. The head rotation ``R`` turns the model about its origin (the synthetic world's
``global_pose`` for the families without a skeleton), then the camera projects:

* weak perspective (DECA / SMIRK): ``x_ndc = s (R X + t)_xy`` with ``t = (tx, ty)``;
* pinhole perspective: ``X_view = R X + t`` with ``t = (tx, ty, tz)``, ``tz < 0`` (the camera looks along -z).

:func:`weak_perspective_procrustes` solves the weak-perspective pose in closed form: the least-squares affine
camera ``A`` (2x3) of the centred correspondences, then the nearest scaled orthographic camera ``s [r1; r2]`` from
the SVD of ``A`` (``s`` the mean singular value, ``[r1; r2] = U V^T``) with ``r3 = r1 x r2`` (the affine-to-
similarity step of 3DDFA / face3d's ``P2sRt``, and the first iteration of POS, DeMenthon & Davis 1995).
:func:`perspective_from_weak` turns it into a pinhole pose with the same image of the landmarks' centroid and the
same apparent size (POS's depth from scale), which the landmark stage then refines.
"""

from __future__ import annotations

import torch
from kornia.geometry.conversions import rotation_matrix_to_axis_angle
from torch import Tensor

__all__ = ["matrix_to_axis_angle", "perspective_from_weak", "weak_perspective_procrustes"]


def matrix_to_axis_angle(rotation: Tensor) -> Tensor:
    """(..., 3, 3) rotation matrices to (..., 3) axis-angle vectors (kornia)."""
    shape = rotation.shape[:-2]
    return rotation_matrix_to_axis_angle(rotation.reshape(-1, 3, 3)).reshape(*shape, 3)


def weak_perspective_procrustes(points: Tensor, targets: Tensor, weights: Tensor | None = None,
                                eps: float = 1e-9) -> tuple[Tensor, Tensor, Tensor]:
    """Weak-perspective pose that maps 3D points onto 2D targets: ``targets ~ s (R points + t)_xy``.

    Args:
        points: (B, L, 3) model-frame points (e.g. the mean face's 68 landmarks).
        targets: (B, L, 2) their image positions in NDC (+y up).
        weights: (B, L) non-negative confidence of each correspondence (0 drops a point); all 1 when None.
        eps: ridge of the 3x3 normal equations (relative to their trace), for (near-)planar point sets.

    Returns:
        ``rotation`` (B, 3, 3) proper rotation, ``scale`` (B,) and ``translation`` (B, 2) in model units.

    Raises:
        ValueError: shapes disagree.
    """
    if points.dim() != 3 or points.shape[-1] != 3 or targets.shape != (*points.shape[:2], 2):
        raise ValueError(f"expected points (B, L, 3) and targets (B, L, 2); got {tuple(points.shape)}, "
                         f"{tuple(targets.shape)}")
    w = points.new_ones(points.shape[:2]) if weights is None else weights.to(points)
    w = w / w.sum(dim=1, keepdim=True).clamp_min(1e-12)
    x_mean = (w[..., None] * points).sum(1, keepdim=True)
    y_mean = (w[..., None] * targets).sum(1, keepdim=True)
    xc, yc = points - x_mean, targets - y_mean
    xtx = torch.einsum("bl,bli,blj->bij", w, xc, xc)  # (B, 3, 3)
    ytx = torch.einsum("bl,bli,blj->bij", w, yc, xc)  # (B, 2, 3)
    ridge = eps * xtx.diagonal(dim1=1, dim2=2).sum(-1)[:, None, None] * torch.eye(3, dtype=xtx.dtype,
                                                                                  device=xtx.device)
    affine = torch.linalg.solve(xtx + ridge, ytx.transpose(1, 2)).transpose(1, 2)  # (B, 2, 3)
    u, sigma, vh = torch.linalg.svd(affine, full_matrices=False)  # (B,2,2), (B,2), (B,2,3)
    rows = u @ vh  # (B, 2, 3) orthonormal rows
    rotation = torch.cat([rows, torch.cross(rows[:, 0], rows[:, 1], dim=-1)[:, None]], dim=1)
    scale = sigma.mean(dim=1)
    translation = y_mean[:, 0] / scale[:, None] - torch.einsum("bij,bj->bi", rotation[:, :2], x_mean[:, 0])
    return rotation, scale, translation


def perspective_from_weak(rotation: Tensor, scale: Tensor, translation: Tensor, centroid: Tensor, focal: Tensor,
                          principal_point: Tensor, image_size: tuple[int, int]) -> Tensor:
    """Pinhole translation that reproduces a weak-perspective pose at the points' centroid.

    The depth follows from the apparent size (``s = 2 f / (W d)``), and ``(tx, ty)`` keep the centroid's image
    position (including an off-centre principal point).

    Args:
        rotation: (B, 3, 3). scale: (B,). translation: (B, 2) weak-perspective pose.
        centroid: (B, 3) model-frame centroid of the points the pose was solved on.
        focal: (B, 2) ``(fx, fy)`` pixels. principal_point: (B, 2) ``(cx, cy)`` pixels.
        image_size: ``(H, W)``.

    Returns:
        (B, 3) translation ``t`` of :class:`facelab.render.PerspectiveCamera` (``tz < 0``).
    """
    h, w = image_size
    depth = 2.0 * focal[:, 0] / (w * scale)
    offset = torch.stack([2.0 * principal_point[:, 0] / w - 1.0, 1.0 - 2.0 * principal_point[:, 1] / h], dim=-1)
    rotated = torch.einsum("bij,bj->bi", rotation, centroid)  # (B, 3)
    ndc = scale[:, None] * (rotated[:, :2] + translation)  # where the weak camera puts the centroid
    per_unit = torch.stack([2.0 * focal[:, 0] / w, 2.0 * focal[:, 1] / h], dim=-1) / depth[:, None]
    xy_view = (ndc - offset) / per_unit  # view-frame x, y of the centroid at that depth
    txy = xy_view - rotated[:, :2]
    tz = -depth - rotated[:, 2]
    return torch.cat([txy, tz[:, None]], dim=1)
