"""Texture sampling and unwrapping, and the unwrap -> render round trip."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from facelab.render import MeshRenderer, WeakPerspectiveCamera, axis_angle_to_matrix, rasterize
from facelab.uv import UVMapper, sample_texture, unwrap_texture


def _smooth_texture(size: int = 64) -> torch.Tensor:
    """(1, 3, S, S) a smooth colourful texture."""
    c = (torch.arange(size) + 0.5) / size
    v, u = torch.meshgrid(1 - c, c, indexing="ij")
    return torch.stack([0.5 + 0.4 * torch.sin(3 * u), 0.5 + 0.4 * torch.cos(2 * v + u), 0.3 + 0.5 * u * v])[None]


def test_sample_texture_hits_texel_centres_exactly():
    texture = torch.rand(2, 3, 5, 7)
    rows, cols = torch.meshgrid(torch.arange(5), torch.arange(7), indexing="ij")
    uv = torch.stack([(cols + 0.5) / 7, 1 - (rows + 0.5) / 5], -1).expand(2, -1, -1, -1)
    torch.testing.assert_close(sample_texture(texture, uv), texture)
    torch.testing.assert_close(sample_texture(texture[:1], uv[:1], mode="nearest"), texture[:1])


def test_unwrap_then_render_round_trip_matches_on_the_visible_region(make_grid):
    verts, faces, uv, faces_uv = make_grid(16, height=lambda x, y: 0.6 * torch.exp(-(x**2 + y**2)))
    rot = axis_angle_to_matrix(torch.tensor([[0.2, -0.35, 0.0]]))
    verts = (verts @ rot[0].T)[None]
    cam = WeakPerspectiveCamera.from_params(torch.tensor([[0.8, 0.0, 0.0]]))
    size = 96
    renderer = MeshRenderer(faces, image_size=size, uv=uv, faces_uv=faces_uv)
    texture = _smooth_texture(64)
    first = renderer(verts, cam, texture=texture)
    mapper = UVMapper(faces, uv, faces_uv, size=64)
    unwrapped = unwrap_texture(first.image, cam.project(verts), mapper, fragments=first.fragments)
    assert 0.3 < unwrapped.visibility.mean() < 1.0
    second = renderer(verts, cam, texture=unwrapped.texture)
    # Compare where every bilinear tap of the second lookup saw a visible texel, away from the silhouette.
    seen = renderer(verts, cam, texture=unwrapped.visibility).image[:, :1]
    inner = -F.max_pool2d(-first.mask, 5, stride=1, padding=2)
    region = (seen > 0.999) & (inner > 0)
    assert region.float().mean() > 0.45  # most of the ~60% the mesh covers
    diff = (second.image - first.image).abs().amax(1, keepdim=True)[region]
    assert diff.max() < 0.01 and diff.mean() < 0.002


def test_unwrap_visibility_back_faces_and_occlusion(make_grid, make_cylinder):
    # A cylinder seen from the front: texels on its far side face away.
    verts, faces, uv, faces_uv = make_cylinder(around=24, rows=4)
    cam = WeakPerspectiveCamera.from_params(torch.tensor([[0.6, 0.0, 0.0]]))
    ndc = cam.project(verts[None])
    mapper = UVMapper(faces, uv, faces_uv, size=48, num_verts=verts.shape[0])
    image = torch.rand(1, 3, 32, 32)
    vis = unwrap_texture(image, ndc, mapper).visibility[0, 0]
    texel_angle = (torch.arange(48) + 0.5) / 48 * 2 * math.pi  # u = angle / 2 pi, the front is at angle 0
    front = torch.cos(texel_angle) > 0.2
    back = torch.cos(texel_angle) < -0.2
    valid = mapper.mask[0, 0] > 0
    assert vis[:, front][valid[:, front]].all() and not vis[:, back].any()
    # Two stacked planes: the far one is hidden behind the near one only with the occlusion test.
    gv, gf, guv, gfuv = make_grid(4)
    verts2 = torch.cat([gv * torch.tensor([0.5, 0.5, 1.0]) + torch.tensor([0, 0, 0.5]), gv])
    faces2 = torch.cat([gf, gf + gv.shape[0]])
    uv2 = torch.cat([guv * 0.5, guv * 0.5 + 0.5])
    mapper2 = UVMapper(faces2, uv2, torch.cat([gfuv, gfuv + guv.shape[0]]), size=32)
    ndc2 = cam.project(verts2[None])
    frags = rasterize(ndc2, faces2, (32, 32))
    with_occlusion = unwrap_texture(image, ndc2, mapper2, fragments=frags).visibility[0, 0]
    without = unwrap_texture(image, ndc2, mapper2).visibility[0, 0]
    far_quadrant = (slice(0, 16), slice(16, 32))  # uv in [0.5, 1]^2: row 0 is v = 1
    far_centre = with_occlusion[far_quadrant][6:10, 6:10]
    assert without[far_quadrant][6:10, 6:10].all() and not far_centre.any()
    assert with_occlusion[16:, :16].mean() > 0.9  # the near plane stays visible
