"""UV tools: UV attribute/position/normal maps, texture sampling and unwrapping, displacement maps, subdivision.

UV conventions (v up; row 0 of a UV map is v = 1; texel centres) are documented in :mod:`facelab.uv.maps`.
"""

from facelab.uv.displacement import (
    DisplacementMapper,
    bump_normals,
    displace_along_normals,
    displacement_gradient,
    displacement_to_normal_map,
)
from facelab.uv.maps import (
    UVMapper,
    dilate_uv_map,
    rasterize_uv,
    sample_at_vertices,
    uv_surface_gradients,
    uv_to_grid,
    vertex_uv_pairs,
)
from facelab.uv.subdivide import MeshSubdivider, Subdivision, subdivide_topology
from facelab.uv.texture import (
    UnwrappedTexture,
    grid_sample_packed,
    sample_texture,
    sample_texture_packed,
    unwrap_texture,
)

__all__ = [
    "DisplacementMapper",
    "MeshSubdivider",
    "Subdivision",
    "UVMapper",
    "UnwrappedTexture",
    "bump_normals",
    "dilate_uv_map",
    "displace_along_normals",
    "displacement_gradient",
    "displacement_to_normal_map",
    "grid_sample_packed",
    "rasterize_uv",
    "sample_at_vertices",
    "sample_texture",
    "sample_texture_packed",
    "subdivide_topology",
    "unwrap_texture",
    "uv_surface_gradients",
    "uv_to_grid",
    "vertex_uv_pairs",
]
