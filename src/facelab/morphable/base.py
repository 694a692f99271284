"""The interface every morphable model shares, and the small ops they all use.

Glossary of shapes: ``B`` batch, ``V`` vertices, ``F`` faces (triangles), ``T`` UV coordinates, ``J`` joints,
``L`` landmarks, ``K`` components of a linear basis.

Coordinate frame of every model's output: right-handed, +y up, the face looks along +z; FLAME/BFM-sized models
keep their native units (FLAME metres, BFM Deep3DFaceRecon units, ICT centimetres) and say so in ``units``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import torch
from torch import Tensor, nn


@dataclass
class MeshOutput:
    """What a morphable model's forward returns.

    Attributes:
        verts: (B, V, 3) vertex positions in the model frame.
        landmarks68: (B, 68, 3) iBUG-68 landmarks (FLAME: 17 yaw-dependent contour points then 51 static).
        landmarks_mp: (B, 105, 3) the mediapipe-subset landmarks where the model has that embedding.
        joints: (B, J, 3) posed joint locations (skinned models only).
        albedo: (B, V, 3) per-vertex colour in [0, 1] (models with a colour basis only).
    """

    verts: Tensor
    landmarks68: Tensor | None = None
    landmarks_mp: Tensor | None = None
    joints: Tensor | None = None
    albedo: Tensor | None = None

    def to(self, *args, **kwargs) -> MeshOutput:
        return type(self)(**{f.name: _maybe_to(getattr(self, f.name), *args, **kwargs) for f in fields(self)})


def _maybe_to(x, *args, **kwargs):
    return x.to(*args, **kwargs) if isinstance(x, Tensor) else x


def barycentric_points(verts: Tensor, faces: Tensor, face_idx: Tensor, bary: Tensor) -> Tensor:
    """Points given as (face, barycentric coordinates) on a batch of meshes.

    Args:
        verts: (B, V, 3).
        faces: (F, 3) long.
        face_idx: (L,) or (B, L) long, the face each point lies on.
        bary: (L, 3) or (B, L, 3) barycentric coordinates.

    Returns:
        (B, L, 3) the points.
    """
    corner_ids = faces[face_idx]  # (L,3) or (B,L,3)
    if corner_ids.dim() == 2:
        tri = verts[:, corner_ids]  # (B, L, 3 corners, 3 xyz)
    else:
        b = torch.arange(verts.shape[0], device=verts.device)[:, None, None]
        tri = verts[b, corner_ids]
    return (tri * bary.to(verts.dtype).unsqueeze(-1)).sum(dim=-2)


def faces_in_region(faces: Tensor, vertex_ids: Tensor) -> Tensor:
    """Indices of the faces whose three corners all lie in ``vertex_ids`` (a named vertex region)."""
    inside = torch.zeros(int(faces.max()) + 1, dtype=torch.bool, device=faces.device)
    inside[vertex_ids] = True
    return torch.nonzero(inside[faces].all(dim=1)).squeeze(1)


class MorphableModel(nn.Module):
    """Base class of FLAME, BFM, bilinear and ICT models.

    Subclasses register these buffers (all on the module, so ``.to(device, dtype)`` moves them):
        faces: (F, 3) long, triangles, counter-clockwise seen from outside (front faces point out).
        uv: (T, 2) float UV coordinates in [0, 1], v up (OBJ convention); empty (0, 2) if the model has none.
        faces_uv: (F, 3) long, per-corner indices into ``uv`` (UV seams make these differ from ``faces``).
    and fill ``self.regions``: named vertex regions (``dict[str, Tensor]`` of long vertex ids, registered as
    buffers ``region_<name>``).
    """

    faces: Tensor
    uv: Tensor
    faces_uv: Tensor
    units: str = "m"

    def __init__(self) -> None:
        super().__init__()
        self._region_names: list[str] = []

    def register_constant(self, name: str, value, dtype: torch.dtype | None = None) -> None:
        """Register asset data as a non-persistent buffer: ``.to()`` moves and casts it, checkpoints leave it out
        (it is rebuilt from the asset files, which are large and often licensed).

        Args:
            name: buffer name. value: array-like. dtype: default ``torch.get_default_dtype()``.
        """
        array = np.ascontiguousarray(value)
        self.register_buffer(name, torch.as_tensor(array, dtype=dtype or torch.get_default_dtype()), persistent=False)

    def register_topology(self, faces, uv=None, faces_uv=None) -> None:
        """Register ``faces`` (F, 3) and the per-corner UV layout ``uv`` (T, 2) / ``faces_uv`` (F, 3) (empty when
        the model has no UVs)."""
        self.register_constant("faces", faces, torch.long)
        self.register_constant("uv", np.zeros((0, 2)) if uv is None else np.reshape(uv, (-1, 2)))
        self.register_constant("faces_uv", np.zeros((0, 3)) if faces_uv is None else np.reshape(faces_uv, (-1, 3)),
                               torch.long)

    def register_region(self, name: str, vertex_ids) -> None:
        self.register_buffer(f"region_{name}", torch.as_tensor(vertex_ids, dtype=torch.long), persistent=False)
        if name not in self._region_names:
            self._region_names.append(name)

    def register_regions(self, regions: dict) -> None:
        """Register every ``name -> vertex ids`` entry of ``regions`` (see :meth:`register_region`)."""
        for name, ids in regions.items():
            self.register_region(name, ids)

    @property
    def regions(self) -> dict[str, Tensor]:
        """Named vertex regions: name -> (N,) long vertex ids."""
        return {name: getattr(self, f"region_{name}") for name in self._region_names}

    def region_faces(self, name: str) -> Tensor:
        """(F_r,) indices of the faces entirely inside the named vertex region."""
        if name not in self._region_names:
            raise KeyError(f"{type(self).__name__} has no region '{name}'; it has {sorted(self._region_names)}")
        return faces_in_region(self.faces, getattr(self, f"region_{name}"))

    @property
    def num_verts(self) -> int:
        raise NotImplementedError

    @property
    def num_faces(self) -> int:
        return int(self.faces.shape[0])
