"""Landmark error: the normalized mean error (NME) with the usual normalizations, per image, with visibility.

``NME_b = mean_{l visible} ||pred_bl - target_bl||_2 / d_b`` with the normalizer ``d_b``:

* ``"none"``: 1 (the error in the landmarks' own units, e.g. NDC of a crop);
* ``"bbox"``: ``sqrt(w * h)`` of the box around the visible ground-truth landmarks (the AFLW2000-3D protocol of
  3DDFA, Zhu et al. 2016 / Guo et al. 2020, used by DualStream's Table III; also for dense NME over vertices);
* ``"inter_ocular"``: distance between the outer eye corners (300-W, Sagonas et al. 2013; iBUG-68 points 36, 45);
* ``"inter_pupil"``: distance between the eye centres (the means of iBUG-68 points 36-41 and 42-47);
* a (B,) tensor: any per-image size (a detector's face box, ...).

Other layouts (mediapipe, 98-point WFLW, a model's own landmark embedding) give their eye points in
``eye_indices``: two groups of landmark indices whose centroids are the two ends of the normalizing distance.

AFLW2000-3D is reported per yaw bin and as the mean of the bins (:func:`yaw_binned_mean`).

Shapes: ``B`` images, ``L`` landmarks. Coordinates: any 2D (or 3D) frame shared by ``pred`` and ``target``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

__all__ = [
    "IBUG68_INTER_OCULAR",
    "IBUG68_INTER_PUPIL",
    "Normalization",
    "YawBinnedError",
    "landmark_distances",
    "landmark_nme",
    "nme_normalizer",
    "yaw_binned_mean",
]

Normalization = Literal["none", "bbox", "inter_ocular", "inter_pupil"]

#: iBUG-68 (0-based) outer eye corners: image-left eye's outer corner 36, image-right eye's outer corner 45.
IBUG68_INTER_OCULAR: tuple[tuple[int, ...], tuple[int, ...]] = ((36,), (45,))
#: iBUG-68 (0-based) eye contours whose centroids are the pupils: 36-41 and 42-47.
IBUG68_INTER_PUPIL: tuple[tuple[int, ...], tuple[int, ...]] = (tuple(range(36, 42)), tuple(range(42, 48)))


def _check(pred: Tensor, target: Tensor, dims: int) -> None:
    if pred.dim() != 3 or pred.shape[:2] != target.shape[:2]:
        raise ValueError(f"landmark metrics: pred {tuple(pred.shape)} and target {tuple(target.shape)} must be "
                         "(B, L, D) with the same B and L")
    if min(pred.shape[-1], target.shape[-1]) < dims:
        raise ValueError(f"landmark metrics compare {dims} coordinates; pred {tuple(pred.shape)} / target "
                         f"{tuple(target.shape)} have fewer")


def landmark_distances(pred: Tensor, target: Tensor, dims: int = 2) -> Tensor:
    """(B, L) Euclidean distances of the first ``dims`` coordinates (extra columns such as depth are ignored).

    Args:
        pred, target: (B, L, D>=dims) landmarks in one frame.
        dims: 2 (image-plane error) or 3.
    """
    _check(pred, target, dims)
    return (pred[..., :dims] - target[..., :dims].to(pred)).norm(dim=-1)


def _centroid(points: Tensor, ids: Sequence[int]) -> Tensor:
    return points[:, list(ids)].mean(dim=1)


def nme_normalizer(target: Tensor, normalization: Normalization, *,
                   eye_indices: tuple[Sequence[int], Sequence[int]] | None = None,
                   visibility: Tensor | None = None) -> Tensor:
    """(B,) the normalizing distance of each image (see the module docstring), from the ground truth ``target``.

    Args:
        target: (B, L, 2+) ground-truth landmarks (only x, y are used).
        normalization: ``"none"``, ``"bbox"``, ``"inter_ocular"`` or ``"inter_pupil"``.
        eye_indices: the two landmark groups of the eye distance (default: iBUG-68's, which needs L = 68).
        visibility: (B, L) which landmarks count for the ``"bbox"`` box (None: all).
    """
    xy = target[..., :2]
    if normalization == "none":
        return xy.new_ones(xy.shape[0])
    if normalization == "bbox":
        if visibility is None:
            lo, hi = xy.amin(dim=1), xy.amax(dim=1)
        else:
            vis = visibility.to(torch.bool)[..., None]
            lo = torch.where(vis, xy, torch.full_like(xy, float("inf"))).amin(dim=1)
            hi = torch.where(vis, xy, torch.full_like(xy, float("-inf"))).amax(dim=1)
        wh = hi - lo
        return (wh[:, 0] * wh[:, 1]).clamp(min=0).sqrt()
    if normalization in ("inter_ocular", "inter_pupil"):
        if eye_indices is None:
            if target.shape[1] != 68:
                raise ValueError(f"{normalization} NME of {target.shape[1]} landmarks needs eye_indices (the default "
                                 "indices are iBUG-68's)")
            eye_indices = IBUG68_INTER_OCULAR if normalization == "inter_ocular" else IBUG68_INTER_PUPIL
        left, right = eye_indices
        if not len(left) or not len(right):
            raise ValueError(f"eye_indices needs two non-empty groups, got {eye_indices}")
        return (_centroid(xy, left) - _centroid(xy, right)).norm(dim=-1)
    raise ValueError(f"normalization must be 'none', 'bbox', 'inter_ocular', 'inter_pupil' or a (B,) tensor, got "
                     f"{normalization!r}")


def landmark_nme(pred: Tensor, target: Tensor, normalization: Normalization | Tensor = "none", *,
                 eye_indices: tuple[Sequence[int], Sequence[int]] | None = None,
                 visibility: Tensor | None = None, dims: int = 2) -> Tensor:
    """Per-image normalized mean landmark error ``mean_{l visible} ||pred_l - target_l|| / d`` (module docstring).

    With the default ``normalization="none"`` this is the plain mean Euclidean distance in the landmarks' units
    (SMIRK's ``val/nme_*``: NDC of the crop, half the crop side = 1).

    Args:
        pred: (B, L, D) predicted landmarks (columns beyond ``dims`` are ignored).
        target: (B, L, D') ground truth.
        normalization: see the module docstring, or a (B,) tensor of per-image normalizers.
        eye_indices: the eye groups for ``"inter_ocular"`` / ``"inter_pupil"`` of non-iBUG-68 layouts.
        visibility: (B, L) bool or {0, 1}: the landmarks that count (None: all). An image without a visible landmark
            gives NaN.
        dims: 2 (image plane) or 3 coordinates in the distance.

    Returns:
        (B,) NME per image; ``.mean()`` is the dataset NME.
    """
    dist = landmark_distances(pred, target, dims)
    if isinstance(normalization, Tensor):
        norm = normalization.to(dist)
        if norm.shape != (dist.shape[0],):
            raise ValueError(f"a tensor normalization must be (B,) = ({dist.shape[0]},), got {tuple(norm.shape)}")
    else:
        norm = nme_normalizer(target.to(dist), normalization, eye_indices=eye_indices, visibility=visibility)
    if visibility is None:
        mean = dist.mean(dim=-1)
    else:
        if visibility.shape != dist.shape:
            raise ValueError(f"visibility must be (B, L) = {tuple(dist.shape)}, got {tuple(visibility.shape)}")
        w = visibility.to(dist)
        mean = (dist * w).sum(dim=-1) / w.sum(dim=-1)  # 0 / 0 = NaN for an image without visible landmarks
    return mean / norm


@dataclass
class YawBinnedError:
    """An error averaged per absolute-yaw bin (AFLW2000-3D: [0, 30), [30, 60), [60, 90] degrees) and over bins.

    Attributes:
        edges: the bin edges in degrees (``len(edges) - 1`` bins; the last bin includes its upper edge).
        per_bin: mean error of each bin (NaN for an empty bin).
        counts: images in each bin.
        balanced_mean: mean of the non-empty bins' means (the protocol's headline number).
        overall_mean: mean over all binned images.
    """

    edges: tuple[float, ...]
    per_bin: tuple[float, ...]
    counts: tuple[int, ...]
    balanced_mean: float
    overall_mean: float


def yaw_binned_mean(errors: Tensor, yaw_degrees: Tensor, edges: Sequence[float] = (0.0, 30.0, 60.0, 90.0)
                    ) -> YawBinnedError:
    """Bin per-image ``errors`` (N,) by ``|yaw|`` (N,) in degrees (3DDFA's AFLW2000-3D evaluation).

    Images whose ``|yaw|`` falls outside ``[edges[0], edges[-1]]`` are left out.
    """
    if errors.shape != yaw_degrees.shape or errors.dim() != 1:
        raise ValueError(f"errors and yaw_degrees must both be (N,), got {tuple(errors.shape)} and "
                         f"{tuple(yaw_degrees.shape)}")
    edges = tuple(float(e) for e in edges)
    if len(edges) < 2 or any(b <= a for a, b in zip(edges, edges[1:])):
        raise ValueError(f"edges must be increasing with at least two values, got {edges}")
    yaw, err = yaw_degrees.abs().double(), errors.double()
    per_bin, counts, used = [], [], torch.zeros_like(yaw, dtype=torch.bool)
    for i, (lo, hi) in enumerate(zip(edges, edges[1:])):
        inside = (yaw >= lo) & ((yaw <= hi) if i == len(edges) - 2 else (yaw < hi))
        used |= inside
        counts.append(int(inside.sum()))
        per_bin.append(float(err[inside].mean()) if counts[-1] else float("nan"))
    filled = [v for v, c in zip(per_bin, counts) if c]
    return YawBinnedError(edges=edges, per_bin=tuple(per_bin), counts=tuple(counts),
                          balanced_mean=sum(filled) / len(filled) if filled else float("nan"),
                          overall_mean=float(err[used].mean()) if used.any() else float("nan"))
