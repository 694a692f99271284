"""Midpoint (1 -> 4) subdivision of a triangle mesh and its UV layout, so that UV detail has vertices to land on.

New vertices sit at edge midpoints (positions stay on the coarse surface; the detail comes from a displacement
map, as in DNPM and DECA's dense mesh). Each triangle ``(a, b, c)`` with midpoints ``ab, bc, ca`` becomes
``(a, ab, ca), (ab, b, bc), (ca, bc, c), (ab, bc, ca)``: winding is kept.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = ["MeshSubdivider", "Subdivision", "subdivide_topology"]


@dataclass
class Subdivision:
    """One level of midpoint subdivision.

    Attributes:
        faces: (4F, 3) long triangles over ``V + E`` vertices.
        edges: (E, 2) long: new vertex ``V + e`` is the midpoint of ``edges[e]``.
        faces_uv: (4F, 3) long per-corner UV indices over ``T + E_uv`` UVs, or None.
        uv_edges: (E_uv, 2) long: new UV ``T + e`` is the midpoint of ``uv_edges[e]``, or None.
    """

    faces: Tensor
    edges: Tensor
    faces_uv: Tensor | None = None
    uv_edges: Tensor | None = None


def _split(faces: Tensor, n_points: int) -> tuple[Tensor, Tensor]:
    """Split every triangle of an index topology; returns the new faces and the unique edges."""
    pairs = torch.stack([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]], dim=1)  # (F, 3 edges, 2)
    pairs = pairs.sort(dim=-1).values.reshape(-1, 2)
    edges, edge_of = torch.unique(pairs, dim=0, return_inverse=True)
    mid = (edge_of + n_points).view(-1, 3)  # (F, 3): midpoints of ab, bc, ca
    a, b, c = faces.unbind(1)
    ab, bc, ca = mid.unbind(1)
    new = torch.stack([
        torch.stack([a, ab, ca], 1), torch.stack([ab, b, bc], 1),
        torch.stack([ca, bc, c], 1), torch.stack([ab, bc, ca], 1),
    ], dim=1)
    return new.reshape(-1, 3), edges


def subdivide_topology(faces: Tensor, num_verts: int, faces_uv: Tensor | None = None,
                       num_uv: int | None = None) -> Subdivision:
    """One level of midpoint subdivision of the vertex topology and (optionally) the UV topology.

    Args:
        faces: (F, 3) long.
        num_verts: ``V``.
        faces_uv: (F, 3) long per-corner UV indices (seams stay seams).
        num_uv: ``T``, the number of UV coordinates.

    Returns:
        :class:`Subdivision`.
    """
    new_faces, edges = _split(faces, num_verts)
    if faces_uv is None:
        return Subdivision(new_faces, edges)
    new_faces_uv, uv_edges = _split(faces_uv, int(num_uv if num_uv is not None else faces_uv.max() + 1))
    return Subdivision(new_faces, edges, new_faces_uv, uv_edges)


def _midpoints(values: Tensor, edges: Tensor, dim: int) -> Tensor:
    a = values.index_select(dim, edges[:, 0])
    b = values.index_select(dim, edges[:, 1])
    return torch.cat([values, 0.5 * (a + b)], dim=dim)


class MeshSubdivider(nn.Module):
    """Midpoint-subdivide meshes of one topology ``iterations`` times (each level: faces x 4).

    After construction ``faces``, ``uv`` and ``faces_uv`` hold the dense topology; ``forward`` maps coarse
    vertex data to the dense vertices (differentiable, any trailing channels).

    Args:
        faces: (F, 3) long coarse triangles.
        num_verts: ``V`` coarse vertex count.
        uv: (T, 2) coarse UVs (optional).
        faces_uv: (F, 3) long coarse per-corner UV indices (optional, with ``uv``).
        iterations: subdivision levels.
    """

    faces: Tensor
    uv: Tensor | None
    faces_uv: Tensor | None

    def __init__(self, faces: Tensor, num_verts: int, uv: Tensor | None = None, faces_uv: Tensor | None = None,
                 iterations: int = 1):
        super().__init__()
        faces = torch.as_tensor(faces).long()
        has_uv = uv is not None and faces_uv is not None
        uv = torch.as_tensor(uv, dtype=torch.float32) if has_uv else None
        faces_uv = torch.as_tensor(faces_uv).long() if has_uv else None
        self.num_coarse_verts = int(num_verts)
        self.levels = int(iterations)
        n = int(num_verts)
        for level in range(self.levels):
            sub = subdivide_topology(faces, n, faces_uv, None if uv is None else uv.shape[0])
            self.register_buffer(f"edges_{level}", sub.edges, persistent=False)
            faces, n = sub.faces, n + sub.edges.shape[0]
            if uv is not None:
                uv, faces_uv = _midpoints(uv, sub.uv_edges, 0), sub.faces_uv
        self.num_verts = n
        self.register_buffer("faces", faces, persistent=False)
        self.register_buffer("uv", uv, persistent=False)
        self.register_buffer("faces_uv", faces_uv, persistent=False)

    def forward(self, verts: Tensor) -> Tensor:
        """(B, V, C) coarse per-vertex data (positions, colours, ...) -> (B, V', C) on the dense mesh."""
        if verts.shape[1] != self.num_coarse_verts:
            raise ValueError(f"expected {self.num_coarse_verts} vertices, got {verts.shape[1]}")
        for level in range(self.levels):
            verts = _midpoints(verts, getattr(self, f"edges_{level}"), 1)
        return verts

    def extra_repr(self) -> str:
        return f"iterations={self.levels}, verts={self.num_coarse_verts}->{self.num_verts}"
