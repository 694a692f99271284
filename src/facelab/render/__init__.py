"""Cameras, rasterization, shading and the mesh renderer.

Screen conventions (NDC range, +y up, pixel centres, triangle winding) are documented once in
:mod:`facelab.render.camera`.
"""

from facelab.render.camera import (
    PerspectiveCamera,
    WeakPerspectiveCamera,
    axis_angle_to_matrix,
    euler_to_matrix,
    ndc_to_pixels,
    pixel_centers_ndc,
    pixels_to_ndc,
)
from facelab.render.rasterize import (
    Fragments,
    MeshRasterizer,
    available_backends,
    interpolate,
    interpolate_packed,
    rasterize,
    register_backend,
)
from facelab.render.renderer import MeshRenderer, RenderOutput
from facelab.render.shading import (
    SHAPE_LIGHT_DIRECTIONS,
    DirectionalLights,
    directional_lights,
    face_normals,
    lambertian,
    sh_basis,
    sh_coeffs_to_bands,
    sh_shading,
    shape_lights,
    vertex_normals,
)

__all__ = [
    "SHAPE_LIGHT_DIRECTIONS",
    "DirectionalLights",
    "Fragments",
    "MeshRasterizer",
    "MeshRenderer",
    "PerspectiveCamera",
    "RenderOutput",
    "WeakPerspectiveCamera",
    "available_backends",
    "axis_angle_to_matrix",
    "directional_lights",
    "euler_to_matrix",
    "face_normals",
    "interpolate",
    "interpolate_packed",
    "lambertian",
    "ndc_to_pixels",
    "pixel_centers_ndc",
    "pixels_to_ndc",
    "rasterize",
    "register_backend",
    "sh_basis",
    "sh_coeffs_to_bands",
    "sh_shading",
    "shape_lights",
    "vertex_normals",
]
