"""UV displacement maps: displace meshes along their normals, and turn displacements into detail normal maps.

A displacement map is a (B, 1, S_h, S_w) UV map of signed offsets along the surface normal, in the mesh's units
times ``scale`` (FaceScape maps, converted by their loaders, are millimetres; DECA's are small unitless offsets).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from facelab.render.shading import vertex_normals
from facelab.uv.maps import sample_at_vertices, vertex_uv_pairs
from facelab.uv.subdivide import MeshSubdivider

__all__ = ["DisplacementMapper", "bump_normals", "displace_along_normals", "displacement_gradient",
           "displacement_to_normal_map"]


def displace_along_normals(verts: Tensor, faces: Tensor, displacement: Tensor,
                           normals: Tensor | None = None) -> Tensor:
    """Move each vertex along its unit normal: ``v + d n``.

    Args:
        verts: (B, V, 3).
        faces: (F, 3) long (for the area-weighted vertex normals when ``normals`` is None).
        displacement: (B, V) or (B, V, 1) signed offsets.
        normals: (B, V, 3) unit normals to use instead.

    Returns:
        (B, V, 3).
    """
    if displacement.dim() == 2:
        displacement = displacement.unsqueeze(-1)
    if normals is None:
        normals = vertex_normals(verts, faces)
    return verts + displacement * normals


class DisplacementMapper(nn.Module):
    """Apply UV displacement maps to meshes of one topology, optionally on a midpoint-subdivided mesh.

    Each subdivision level multiplies the faces by 4 so that a high-resolution map has vertices to move
    (DNPM: "sample the displacement map at each vertex's UV and displace along its normal, on a subdivided
    mesh"). The dense topology is ``faces`` / ``uv`` / ``faces_uv`` of this module.

    Args:
        faces: (F, 3) long coarse triangles.
        uv: (T, 2) UVs. faces_uv: (F, 3) long per-corner UV indices.
        num_verts: ``V`` coarse vertex count.
        subdivisions: midpoint subdivision levels (0 = displace the coarse vertices).
    """

    faces: Tensor
    uv: Tensor
    faces_uv: Tensor
    vert_uv_pairs: Tensor

    def __init__(self, faces: Tensor, uv: Tensor, faces_uv: Tensor, num_verts: int, subdivisions: int = 0):
        super().__init__()
        self.subdivider = MeshSubdivider(faces, num_verts, uv, faces_uv, iterations=subdivisions)
        self.register_buffer("faces", self.subdivider.faces, persistent=False)
        self.register_buffer("uv", self.subdivider.uv, persistent=False)
        self.register_buffer("faces_uv", self.subdivider.faces_uv, persistent=False)
        self.register_buffer("vert_uv_pairs", vertex_uv_pairs(self.faces, self.faces_uv), persistent=False)
        self.num_verts = self.subdivider.num_verts

    def vertex_displacement(self, displacement_map: Tensor) -> Tensor:
        """(B, 1, S_h, S_w) map -> (B, V', 1) offsets at the dense vertices' UVs (seams averaged)."""
        return sample_at_vertices(displacement_map, self.uv, self.vert_uv_pairs, self.num_verts)

    def forward(self, verts: Tensor, displacement_map: Tensor, scale: float = 1.0) -> Tensor:
        """Displace (B, V, 3) coarse vertices by a (B, 1, S_h, S_w) map; returns (B, V', 3) dense vertices."""
        dense = self.subdivider(verts)
        return displace_along_normals(dense, self.faces, scale * self.vertex_displacement(displacement_map))


def _central_difference(pos: Tensor, valid: Tensor, dim: int) -> Tensor:
    """d pos / d index along ``dim`` (-1: columns, -2: rows) from the valid neighbours (one-sided at borders)."""
    def shift(x: Tensor, step: int) -> Tensor:
        pad = [0, 0, 0, 0]
        i = 0 if dim == -1 else 2
        pad[i + (1 if step > 0 else 0)] = 1
        x = F.pad(x, pad)
        n = x.shape[dim] - 1
        return x.narrow(dim, 1 if step > 0 else 0, n)

    fwd_ok = valid * shift(valid, 1)
    bwd_ok = valid * shift(valid, -1)
    fwd = (shift(pos, 1) - pos) * fwd_ok
    bwd = (pos - shift(pos, -1)) * bwd_ok
    return (fwd + bwd) / (fwd_ok + bwd_ok).clamp(min=1)


def displacement_to_normal_map(position_map: Tensor, normal_map: Tensor, displacement: Tensor,
                               mask: Tensor | None = None, scale: float = 1.0) -> Tensor:
    """Detail normals of a displaced surface, in UV space (DECA's ``displacement2normal``).

    The coarse UV position map is displaced along the coarse UV normal map, ``P' = P + scale * d * N``, and the
    normal of the dense surface is ``dP'/du x dP'/dv`` from finite differences between valid neighbouring texels
    (one-sided at chart borders), oriented to agree with the coarse normal. Texels without a valid neighbour
    along u or v, and texels outside ``mask``, keep the coarse normal.

    Args:
        position_map: (B, 3, S_h, S_w) coarse positions (:meth:`facelab.uv.UVMapper.position_map`).
        normal_map: (B, 3, S_h, S_w) coarse unit normals (:meth:`facelab.uv.UVMapper.normal_map`).
        displacement: (B, 1, S_h, S_w) offsets.
        mask: (B or 1, 1, S_h, S_w) valid texels (default: where ``normal_map`` is non-zero).
        scale: factor on ``displacement``.

    Returns:
        (B, 3, S_h, S_w) unit detail normals (the coarse normal outside the mask).
    """
    if mask is None:
        mask = normal_map.abs().sum(dim=1, keepdim=True) > 0
    valid = mask.to(position_map.dtype).expand(position_map.shape[0], 1, -1, -1)
    detailed = position_map + scale * displacement * normal_map
    d_col = _central_difference(detailed, valid, -1)  # along +u
    d_row = _central_difference(detailed, valid, -2)  # along -v (rows go down)
    normal = torch.cross(d_col, -d_row, dim=1)
    normal = normal * torch.sign((normal * normal_map).sum(dim=1, keepdim=True) + 1e-30)
    ok = (valid > 0) & (normal.norm(dim=1, keepdim=True) > 1e-12)
    return torch.where(ok, F.normalize(normal, dim=1, eps=1e-12), normal_map)


def displacement_gradient(displacement: Tensor) -> Tensor:
    """Derivatives of UV maps along u and v, per UV unit (central differences; one-sided at the map's border).

    Row 0 of a UV map is v = 1 (:mod:`facelab.uv.maps`), so ``d/dv`` is the difference of the row above minus the
    row below. A displacement map's gutter should be filled first (:func:`facelab.uv.dilate_uv_map`) so that chart
    borders do not read as steps.

    Args:
        displacement: (B, C, S_h, S_w) maps (C = 1 for a displacement map).

    Returns:
        (B, 2C, S_h, S_w): the C maps' ``d/du`` then their ``d/dv``.
    """
    if displacement.dim() != 4:
        raise ValueError(f"displacement must be (B, C, S_h, S_w), got {tuple(displacement.shape)}")
    s_h, s_w = displacement.shape[-2:]
    pad = F.pad(displacement, (1, 1, 1, 1), mode="replicate")
    d_u = (pad[..., 1:-1, 2:] - pad[..., 1:-1, :-2]) * (s_w / 2.0)
    d_v = (pad[..., :-2, 1:-1] - pad[..., 2:, 1:-1]) * (s_h / 2.0)
    return torch.cat([d_u, d_v], dim=1)


def bump_normals(normals: Tensor, d_uv: Tensor, grad_u: Tensor, grad_v: Tensor, scale: float = 1.0) -> Tensor:
    """Normals of a surface displaced along its normals, to first order (Blinn 1978 bump mapping).

    The displaced surface ``P + s d n`` has the normal ``normalize(n - s grad_S d)`` up to curvature terms, with
    the surface gradient ``grad_S d = dd/du grad u + dd/dv grad v`` from the UV derivatives of the displacement
    map (:func:`displacement_gradient`) and the tangent frame of the layout
    (:func:`facelab.uv.maps.uv_surface_gradients`). Shapes broadcast, e.g. (M, 3) normals of packed pixels.

    Args:
        normals: (..., 3) unit base normals.
        d_uv: (..., 2) ``(dd/du, dd/dv)`` in displacement units per UV unit.
        grad_u, grad_v: (..., 3) surface gradients of u and v, per length unit of the frame of ``normals``.
        scale: length units per displacement unit (e.g. 1e-3 for a map in mm on a mesh in metres).

    Returns:
        (..., 3) unit detail normals.
    """
    slope = d_uv[..., 0:1] * grad_u + d_uv[..., 1:2] * grad_v
    return F.normalize(normals - scale * slope, dim=-1, eps=1e-12)
