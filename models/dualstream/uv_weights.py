"""The PRNet facial UV weight mask (DualStream Eq. 5's ``W``), built for any UV layout.

PRNet (Feng et al., ECCV 2018, Sec. 3.3) weights its position-map loss by region: the 68 keypoints 16, the eyes,
nose and mouth 4, the rest of the face 3, the neck 0 (``16 : 4 : 3 : 0``). PRNet ships that mask as a picture of
its own UV layout; here it is derived from what every morphable model with UVs has:

* **face** (weight ``face``): the texels covered by the mesh's UV charts (:attr:`facelab.uv.UVMapper.mask`), minus
  the texels of faces in any region named in ``zero_regions`` (``neck`` by default; the BFM front model has none,
  it was cut above the neck, so there the neck level is simply everything off the charts);
* **eyes / nose / mouth** (weight ``features``): the convex hulls, in UV, of the landmark groups of the iBUG-68
  scheme (each eye 36-41 / 42-47, the nose 27-35, the outer mouth 48-59), grown by ``feature_margin`` (a fraction of
  the hull's own size, so the eye region also holds the lids and the mouth the lips' outer edge);
* **keypoints** (weight ``keypoints``): discs of radius ``keypoint_radius`` (fraction of the UV side) around the
  UV of each of the 68 landmark vertices.

Higher levels override lower ones (a keypoint on the lip is 16, not 4). Everything off the face is 0.

Shapes: ``S_h, S_w`` the UV map size, ``T`` UV coordinates, ``F`` faces.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from facelab.masks import convex_hull_mask
from facelab.uv import UVMapper

__all__ = ["LANDMARK_GROUPS", "UVWeightLevels", "UVWeightMask", "uv_weight_mask", "vertex_uv"]

#: iBUG-68 landmark groups of the ``features`` level (0-based).
LANDMARK_GROUPS: dict[str, tuple[int, ...]] = {
    "right_eye": tuple(range(36, 42)),
    "left_eye": tuple(range(42, 48)),
    "nose": tuple(range(27, 36)),
    "mouth": tuple(range(48, 60)),
}


@dataclass(frozen=True)
class UVWeightLevels:
    """The four weights of the mask (PRNet: 16, 4, 3, 0).

    Attributes:
        keypoints: around the 68 landmark texels. features: eyes, nose, mouth. face: the rest of the face charts.
        neck: off the face and in ``zero_regions``.
    """

    keypoints: float = 16.0
    features: float = 4.0
    face: float = 3.0
    neck: float = 0.0


def _uv_pixels(uv: Tensor, size: tuple[int, int]) -> Tensor:
    """(..., 2) UV (v up) -> (..., 2) pixel coordinates of the UV map (origin top-left corner, +v down)."""
    h, w = size
    return torch.stack([uv[..., 0] * w, (1.0 - uv[..., 1]) * h], dim=-1)


def _grown_hull(points: Tensor, size: tuple[int, int], margin: float) -> Tensor:
    """(1, 1, S_h, S_w) convex hull of (L, 2) pixel points, grown by ``margin`` times the hull's diagonal."""
    grow = float(margin * (points.amax(0) - points.amin(0)).norm())
    return convex_hull_mask(points[None], size, margin=0.75 + grow)


def uv_weight_mask(
    mapper: UVMapper,
    landmark_uv: Tensor,
    *,
    zero_faces: Tensor | None = None,
    levels: UVWeightLevels | None = None,
    feature_margin: float = 0.15,
    keypoint_radius: float = 0.012,
) -> Tensor:
    """The PRNet-style weight mask of one UV layout (module docstring).

    Args:
        mapper: the layout, rasterized (:class:`facelab.uv.UVMapper`).
        landmark_uv: (68, 2) UV of the iBUG-68 landmarks (v up), e.g. ``uv`` of the keypoint vertices.
        zero_faces: (F_0,) long ids of faces whose texels get the ``neck`` weight (e.g. a neck region).
        levels: the weights (:class:`UVWeightLevels` defaults: 16, 4, 3, 0).
        feature_margin: growth of the eye / nose / mouth hulls, as a fraction of each hull's diagonal.
        keypoint_radius: radius of the keypoint discs, as a fraction of the UV map's larger side.

    Returns:
        (1, 1, S_h, S_w) float weights.
    """
    if landmark_uv.shape != (68, 2):
        raise ValueError(f"landmark_uv must be (68, 2) iBUG-68 UVs, got {tuple(landmark_uv.shape)}")
    levels = levels or UVWeightLevels()
    size = mapper.size
    face = mapper.mask.clone()  # (1, 1, S_h, S_w)
    if zero_faces is not None and zero_faces.numel():
        drop = torch.isin(mapper.texel_face, zero_faces.to(mapper.texel_face.device))
        flat = face.view(-1)
        flat[mapper.texel_idx[drop]] = 0.0
    pix = _uv_pixels(landmark_uv.float(), size)
    features = torch.zeros_like(face)
    for ids in LANDMARK_GROUPS.values():
        features = torch.maximum(features, _grown_hull(pix[list(ids)], size, feature_margin))
    rows = torch.arange(size[0], dtype=torch.float32) + 0.5
    cols = torch.arange(size[1], dtype=torch.float32) + 0.5
    grid = torch.stack(torch.meshgrid(cols, rows, indexing="xy"), dim=-1)  # (S_h, S_w, 2) texel centres (u, v)
    radius = keypoint_radius * max(size)
    near = (grid[None] - pix[:, None, None]).norm(dim=-1).amin(0) <= max(radius, 0.75)  # at least its own texel
    weights = torch.full_like(face, levels.neck)
    weights = torch.where(face > 0, torch.full_like(face, levels.face), weights)
    weights = torch.where((features > 0) & (face > 0), torch.full_like(face, levels.features), weights)
    return torch.where(near[None, None] & (face > 0), torch.full_like(face, levels.keypoints), weights)


class UVWeightMask(nn.Module):
    """The weight mask of one layout as a buffer (``mask``: (1, 1, S_h, S_w)).

    Args:
        faces: (F, 3) long mesh triangles. uv: (T, 2) UVs. faces_uv: (F, 3) long. size: ``S`` or ``(S_h, S_w)``.
        keypoints: (68,) long landmark vertex ids (their UV is the UV of that vertex's first corner).
        zero_faces: face ids weighted as neck (see :func:`uv_weight_mask`).
        levels, feature_margin, keypoint_radius: see :func:`uv_weight_mask`.
    """

    mask: Tensor

    def __init__(self, faces: Tensor, uv: Tensor, faces_uv: Tensor, size: int | tuple[int, int],
                 keypoints: Tensor, zero_faces: Tensor | None = None, levels: UVWeightLevels | None = None,
                 feature_margin: float = 0.15, keypoint_radius: float = 0.012) -> None:
        super().__init__()
        mapper = UVMapper(faces, uv, faces_uv, size)
        lmk_uv = vertex_uv(torch.as_tensor(keypoints).long(), mapper)
        self.register_buffer("mask", uv_weight_mask(mapper, lmk_uv, zero_faces=zero_faces, levels=levels,
                                                    feature_margin=feature_margin,
                                                    keypoint_radius=keypoint_radius), persistent=False)

    @classmethod
    def from_model(cls, model, size: int | tuple[int, int], zero_regions: Sequence[str] = ("neck",),
                   **kwargs) -> UVWeightMask:
        """The mask of a :class:`facelab.morphable.base.MorphableModel` with UVs and 68 keypoints."""
        if not model.has_uv:
            raise ValueError(f"{type(model).__name__} has no UV layout: the UV weight mask needs one")
        keypoints = getattr(model, "keypoints", None)
        if keypoints is None or keypoints.numel() != 68:
            raise ValueError(f"{type(model).__name__} has no 68 landmark vertex ids (`keypoints`): the weight mask "
                             "places its keypoint and eye/nose/mouth levels from them")
        zero = [model.region_faces(r) for r in zero_regions if r in model.regions]
        zero_faces = torch.cat(zero) if zero else None
        return cls(model.faces, model.uv, model.faces_uv, size, keypoints, zero_faces=zero_faces, **kwargs)

    def forward(self) -> Tensor:
        return self.mask


def vertex_uv(vertex_ids: Tensor, mapper: UVMapper) -> Tensor:
    """(N, 2) UV of vertices (the UV of one of each vertex's corners; seam vertices have several)."""
    pairs = mapper.vert_uv_pairs  # sorted by vertex id
    first = torch.searchsorted(pairs[:, 0].contiguous(), vertex_ids)
    if (pairs[first.clamp(max=len(pairs) - 1), 0] != vertex_ids).any():
        raise ValueError("some vertex ids are not used by any face of the UV layout")
    return mapper.uv[pairs[first, 1]]
