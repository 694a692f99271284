"""Rasterize a mesh into its UV layout: UV attribute/position/normal maps, validity masks, and UV maps back to
vertices.

UV conventions (all facelab UV code): ``uv`` in ``[0, 1]^2`` with v up (OBJ); a UV map is an image
(B, C, S_h, S_w) whose row 0 is ``v = 1`` (the top), so texel ``(i, j)`` has its centre at
``u = (j + 0.5) / S_w``, ``v = 1 - (i + 0.5) / S_h``. This is exactly the NDC convention of
:mod:`facelab.render.camera` with ``x = 2u - 1``, ``y = 2v - 1``, so the UV layout is rasterized by the same
:func:`facelab.render.rasterize` (at constant depth; overlapping charts resolve to the lower face index).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from facelab.render.rasterize import Fragments, rasterize
from facelab.render.shading import vertex_normals

__all__ = ["UVMapper", "dilate_uv_map", "rasterize_uv", "sample_at_vertices", "uv_surface_gradients", "uv_to_grid",
           "vertex_uv_pairs"]


def _as_size(size: int | tuple[int, int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def uv_to_grid(uv: Tensor) -> Tensor:
    """UV coordinates to ``grid_sample`` coordinates of a UV map (``align_corners=False``).

    Args:
        uv: (..., 2) in [0, 1], v up.

    Returns:
        (..., 2) ``(2u - 1, 1 - 2v)``.
    """
    return uv * uv.new_tensor([2.0, -2.0]) + uv.new_tensor([-1.0, 1.0])  # one fused pass (same values)


def vertex_uv_pairs(faces: Tensor, faces_uv: Tensor) -> Tensor:
    """The distinct (vertex, uv) index pairs of a mesh: a vertex on a UV seam has several.

    Args:
        faces: (F, 3) long. faces_uv: (F, 3) long.

    Returns:
        (P, 2) long rows ``(vertex id, uv id)``.
    """
    return torch.unique(torch.stack([faces.reshape(-1), faces_uv.reshape(-1)], dim=1), dim=0)


def sample_at_vertices(uv_map: Tensor, uv: Tensor, pairs: Tensor, num_verts: int, mode: str = "bilinear") -> Tensor:
    """Sample a UV map at each vertex's UV; a vertex on a seam averages its UV copies (unused vertices get 0).

    Args:
        uv_map: (B, C, S_h, S_w).
        uv: (T, 2) UV coordinates.
        pairs: (P, 2) from :func:`vertex_uv_pairs`.
        num_verts: ``V``.
        mode: ``grid_sample`` mode.

    Returns:
        (B, V, C).
    """
    b, c = uv_map.shape[:2]
    grid = uv_to_grid(uv[pairs[:, 1]].to(uv_map.dtype))  # (P, 2)
    samples = F.grid_sample(uv_map, grid.expand(b, 1, -1, -1), mode=mode, padding_mode="border",
                            align_corners=False)[:, :, 0].transpose(1, 2)  # (B, P, C)
    vert = pairs[:, 0]
    total = uv_map.new_zeros(b, num_verts, c).index_add(1, vert, samples)
    count = uv_map.new_zeros(num_verts).index_add(0, vert, torch.ones_like(vert, dtype=uv_map.dtype))
    return total / count.clamp(min=1)[None, :, None]


def uv_surface_gradients(verts: Tensor, faces: Tensor, corner_uv: Tensor) -> tuple[Tensor, Tensor]:
    """Surface gradients of the u and v coordinates on every triangle: the (dual) tangent frame of a UV layout.

    For a function f linear on a triangle with edges ``e1 = P1 - P0``, ``e2 = P2 - P0`` and unit normal ``n``,
    ``grad f = ((f1 - f0) e2 x n + (f2 - f0) n x e1) / |e1 x e2|`` (it lies in the triangle's plane). A UV map
    ``D`` then varies on the surface as ``grad_S D = dD/du grad u + dD/dv grad v`` (the bump mapping of
    :func:`facelab.uv.displacement.bump_normals`).

    Args:
        verts: (B, V, 3) vertices (any frame; the gradients are in that frame, per unit of its length).
        faces: (F, 3) long.
        corner_uv: (F, 3, 2) UV of each face corner (``uv[faces_uv]``).

    Returns:
        ``(grad_u, grad_v)``, (B, F, 3) each; zero on degenerate triangles.
    """
    corners = verts.index_select(1, faces.reshape(-1)).view(verts.shape[0], faces.shape[0], 3, 3)
    p0, p1, p2 = corners.unbind(2)
    e1, e2 = p1 - p0, p2 - p0
    c = torch.cross(e1, e2, dim=-1)
    area2 = c.norm(dim=-1, keepdim=True)
    inv = torch.where(area2 > 0, 1.0 / area2.clamp(min=torch.finfo(verts.dtype).tiny), 0.0)
    n = c * inv
    a, b = torch.cross(e2, n, dim=-1) * inv, torch.cross(n, e1, dim=-1) * inv
    corner_uv = corner_uv.to(verts.dtype)
    duv1, duv2 = corner_uv[:, 1] - corner_uv[:, 0], corner_uv[:, 2] - corner_uv[:, 0]  # (F, 2)
    grad_u = duv1[:, 0, None] * a + duv2[:, 0, None] * b
    grad_v = duv1[:, 1, None] * a + duv2[:, 1, None] * b
    return grad_u, grad_v


def rasterize_uv(uv: Tensor, faces_uv: Tensor, size: int | tuple[int, int], backend: str = "torch") -> Fragments:
    """Rasterize the UV layout itself: which face (and where in it) each texel centre lies on.

    Args:
        uv: (T, 2) UV coordinates in [0, 1].
        faces_uv: (F, 3) long per-corner indices into ``uv`` (its rows are the mesh's faces).
        size: ``S`` or ``(S_h, S_w)`` of the UV maps.
        backend: rasterizer backend.

    Returns:
        :class:`~facelab.render.Fragments` with batch 1 (``pix_to_face`` indexes the mesh's faces).
    """
    uv = torch.as_tensor(uv, dtype=torch.float32)
    ndc = torch.cat([2.0 * uv - 1.0, torch.ones_like(uv[:, :1])], dim=1)[None]
    return rasterize(ndc, torch.as_tensor(faces_uv, device=ndc.device).long(), _as_size(size), backend=backend)


def dilate_uv_map(uv_map: Tensor, mask: Tensor, iterations: int = 2) -> Tensor:
    """Grow a UV map's valid region into its gutter by averaging valid 3x3 neighbours, ``iterations`` texels deep.

    Bilinear lookups near chart borders then blend with plausible values instead of the background.

    Args:
        uv_map: (B, C, S_h, S_w).
        mask: (B or 1, 1, S_h, S_w) validity (bool or {0, 1}).
        iterations: how many texels to grow.

    Returns:
        (B, C, S_h, S_w); valid texels unchanged.
    """
    kernel = uv_map.new_ones(1, 1, 3, 3)
    if mask.shape[0] == 1:  # one layout for the whole batch: touch only the ring of texels that grows
        valid = mask[0, 0].to(uv_map.dtype) > 0
        out = uv_map * valid
        for _ in range(iterations):
            count = F.conv2d(valid[None, None].to(uv_map.dtype), kernel, padding=1)[0, 0]
            rows, cols = torch.nonzero((count > 0) & ~valid, as_tuple=True)
            padded = F.pad(out, (1, 1, 1, 1))  # invalid texels hold 0, so the 3x3 sum is over valid neighbours
            total = sum(padded[:, :, rows + dr, cols + dc] for dr in range(3) for dc in range(3))  # (B, C, n)
            out = out.clone()
            out[:, :, rows, cols] = total / count[rows, cols]
            valid = valid.clone()
            valid[rows, cols] = True
        return out
    valid = mask.to(uv_map.dtype).expand(uv_map.shape[0], 1, -1, -1)
    out = uv_map * valid
    for _ in range(iterations):
        total = F.conv2d(out.flatten(0, 1)[:, None], kernel, padding=1).view_as(out)
        count = F.conv2d(valid, kernel, padding=1)
        grow = (count > 0) & (valid == 0)
        out = torch.where(grow, total / count.clamp(min=1), out)
        valid = torch.maximum(valid, grow.to(valid.dtype))
    return out


class UVMapper(nn.Module):
    """The UV layout of one topology, rasterized once: maps per-vertex data to UV maps and back.

    Works for any model with UVs (FLAME, BFM, ICT, synthetic). The texel -> (face, barycentric) assignment is a
    buffer; building maps is a gather + weighted sum, differentiable w.r.t. the vertex data.

    Args:
        faces: (F, 3) long mesh triangles.
        uv: (T, 2) UV coordinates in [0, 1], v up.
        faces_uv: (F, 3) long per-corner indices into ``uv``.
        size: ``S`` or ``(S_h, S_w)``.
        num_verts: ``V`` (default: the largest index in ``faces`` plus one).
    """

    faces: Tensor
    uv: Tensor
    faces_uv: Tensor
    texel_idx: Tensor
    texel_corners: Tensor
    texel_bary: Tensor
    texel_face: Tensor
    vert_uv_pairs: Tensor

    def __init__(self, faces: Tensor, uv: Tensor, faces_uv: Tensor, size: int | tuple[int, int] = 256,
                 num_verts: int | None = None):
        super().__init__()
        faces = torch.as_tensor(faces).long()
        faces_uv = torch.as_tensor(faces_uv).long()
        uv = torch.as_tensor(uv, dtype=torch.float32)
        if faces.shape != faces_uv.shape:
            raise ValueError(f"faces {tuple(faces.shape)} and faces_uv {tuple(faces_uv.shape)} must match")
        self.size = _as_size(size)
        self.num_verts = int(faces.max()) + 1 if num_verts is None else int(num_verts)
        frags = rasterize_uv(uv, faces_uv, self.size)
        self.register_buffer("faces", faces, persistent=False)
        self.register_buffer("uv", uv, persistent=False)
        self.register_buffer("faces_uv", faces_uv, persistent=False)
        self.register_buffer("texel_idx", frags.pix_idx, persistent=False)  # (M,) flat texel index
        self.register_buffer("texel_face", frags.face_idx, persistent=False)  # (M,)
        self.register_buffer("texel_corners", faces[frags.face_idx], persistent=False)  # (M, 3) vertex ids
        self.register_buffer("texel_bary", frags.bary_packed.detach(), persistent=False)  # (M, 3)
        # Unique (vertex, uv) pairs: a vertex on a UV seam has several.
        self.register_buffer("vert_uv_pairs", vertex_uv_pairs(faces, faces_uv), persistent=False)

    @property
    def mask(self) -> Tensor:
        """(1, 1, S_h, S_w) float validity: 1 on texels covered by a face."""
        flat = self.texel_bary.new_zeros(self.size[0] * self.size[1])
        flat[self.texel_idx] = 1.0
        return flat.view(1, 1, *self.size)

    def attribute_map(self, attrs: Tensor, background: float = 0.0) -> Tensor:
        """Interpolate per-vertex attributes over the UV layout.

        Args:
            attrs: (B, V, C) or (V, C) per-vertex data.
            background: value of texels outside every chart.

        Returns:
            (B, C, S_h, S_w) (B = 1 for unbatched input).
        """
        if attrs.dim() == 2:
            attrs = attrs[None]
        b, _, c = attrs.shape
        vals = attrs[:, self.texel_corners]  # (B, M, 3, C)
        texels = torch.einsum("mk,bmkc->bmc", self.texel_bary.to(attrs.dtype), vals)
        out = attrs.new_full((b, self.size[0] * self.size[1], c), background)
        out = out.index_copy(1, self.texel_idx, texels)
        return out.transpose(1, 2).reshape(b, c, *self.size)

    def position_map(self, verts: Tensor) -> Tensor:
        """UV position map (PRNet / DualStream "attribute spatial map"): (B, V, 3) -> (B, 3, S_h, S_w).

        The positions are whatever frame ``verts`` is in (model, camera, or image-aligned ``(u, v, z)``).
        """
        return self.attribute_map(verts)

    def normal_map(self, verts: Tensor) -> Tensor:
        """UV map of unit vertex normals interpolated per texel: (B, V, 3) -> (B, 3, S_h, S_w), 0 off-chart."""
        normals = self.attribute_map(vertex_normals(verts, self.faces))
        return F.normalize(normals, dim=1, eps=1e-12)

    def to_vertices(self, uv_map: Tensor, mode: str = "bilinear") -> Tensor:
        """Sample a UV map at each vertex's UV (the inverse of :meth:`attribute_map`; DNPM's "inverse texture
        mapping"); a vertex on a seam averages its UV copies.

        Args:
            uv_map: (B, C, S_h, S_w).
            mode: ``grid_sample`` mode.

        Returns:
            (B, V, C).
        """
        return sample_at_vertices(uv_map, self.uv, self.vert_uv_pairs, self.num_verts, mode)

    def extra_repr(self) -> str:
        return f"size={self.size}, faces={self.faces.shape[0]}, texels={self.texel_idx.shape[0]}"
