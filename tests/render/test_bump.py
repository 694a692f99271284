"""MeshRenderer's detail shading: UV displacement bump mapping, per-image SH on packed pixels, back-face factor."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from facelab.render import MeshRenderer, PerspectiveCamera, WeakPerspectiveCamera, axis_angle_to_matrix
from facelab.render.shading import DirectionalLights, sh_coeffs_to_bands, sh_shading
from facelab.uv import (
    UVMapper,
    bump_normals,
    displacement_gradient,
    displacement_to_normal_map,
    sample_texture,
    sample_texture_packed,
    uv_surface_gradients,
)

HALF = 0.9  # the quad spans [-HALF, HALF]^2 at z = 0; uv = (xy + HALF) / (2 HALF)


def _quad(n: int = 4, dtype=torch.float32):
    """An n x n grid quad facing +z with CCW faces and UVs linear in (x, y)."""
    t = torch.linspace(-HALF, HALF, n + 1, dtype=dtype)
    y, x = torch.meshgrid(t, t, indexing="ij")
    verts = torch.stack([x, y, torch.zeros_like(x)], -1).reshape(-1, 3)
    idx = torch.arange((n + 1) ** 2).view(n + 1, n + 1)
    a, b, c, d = idx[:-1, :-1], idx[:-1, 1:], idx[1:, 1:], idx[1:, :-1]
    faces = torch.cat([torch.stack([a, b, c], -1).reshape(-1, 3), torch.stack([a, c, d], -1).reshape(-1, 3)])
    return verts, faces, (verts[:, :2] + HALF) / (2 * HALF)


def _ramp(size: int, slope_u: float, slope_v: float = 0.0, dtype=torch.float32) -> torch.Tensor:
    """(1, 1, S, S) displacement ``slope_u * u + slope_v * v`` at texel centres (row 0 is v = 1)."""
    c = (torch.arange(size, dtype=dtype) + 0.5) / size
    return (slope_u * c[None, :] + slope_v * (1 - c)[:, None])[None, None]


def _camera(scale: float = 1.0) -> WeakPerspectiveCamera:
    return WeakPerspectiveCamera.from_params(torch.tensor([[scale, 0.0, 0.0]]))


def _light(direction) -> DirectionalLights:
    return DirectionalLights(F.normalize(torch.tensor([direction]), dim=-1), torch.ones(1, 3))


def test_uv_gradients_of_a_plane_and_a_ramp():
    verts, faces, uv = _quad(2)
    grad_u, grad_v = uv_surface_gradients(verts[None], faces, uv[faces])
    torch.testing.assert_close(grad_u[0], torch.tensor([1 / (2 * HALF), 0.0, 0.0]).expand_as(grad_u[0]))
    torch.testing.assert_close(grad_v[0], torch.tensor([0.0, 1 / (2 * HALF), 0.0]).expand_as(grad_v[0]))
    d = displacement_gradient(_ramp(16, 0.3, -0.7))[0, :, 1:-1, 1:-1]  # one-sided at the border
    torch.testing.assert_close(d[0], torch.full((14, 14), 0.3))
    torch.testing.assert_close(d[1], torch.full((14, 14), -0.7))


def test_bump_on_a_plane_matches_the_displaced_plane():
    """d = a u on the quad is the plane z = s a (x + HALF) / (2 HALF): normal (-s a / (2 HALF), 0, 1)."""
    verts, faces, uv = _quad(4)
    renderer = MeshRenderer(faces, image_size=24, uv=uv, faces_uv=faces)
    a, scale = 0.6, 0.5
    disp = _ramp(32, a)
    light = _light([0.5, 0.2, 1.0])
    out = renderer(verts[None], _camera(), lights=light, displacement_map=disp, displacement_scale=scale)
    expected_n = F.normalize(torch.tensor([-scale * a / (2 * HALF), 0.0, 1.0]), dim=0)
    expected = (expected_n * light.directions[0]).sum().clamp(min=0)
    m = out.mask[0, 0] > 0
    # away from the map's border (one-sided differences there)
    inner = m.clone()
    inner[:, :3] = inner[:, 21:] = False
    torch.testing.assert_close(out.image[0, 0][inner], expected.expand(int(inner.sum())), atol=1e-5, rtol=0)
    flat = renderer(verts[None], _camera(), lights=light)
    assert (flat.image[0, 0][inner] - out.image[0, 0][inner]).abs().min() > 0.05  # the bump is visible
    zero = renderer(verts[None], _camera(), lights=light, displacement_map=torch.zeros(1, 1, 32, 32))
    torch.testing.assert_close(zero.image, flat.image)


def test_bump_agrees_with_the_uv_normal_map_of_the_displaced_surface():
    """Two independent routes: bump-mapped vertex normals vs ``displacement_to_normal_map`` (finite differences of
    the displaced UV position map) rendered as a normal map."""
    verts, faces, uv = _quad(4)
    size = 32
    bumps = torch.zeros(1, 1, size, size)
    c = (torch.arange(size) + 0.5) / size
    bumps[0, 0] = 0.05 * torch.sin(2 * math.pi * c[None, :] * 2) * torch.cos(2 * math.pi * c[:, None])
    mapper = UVMapper(faces, uv, faces, size=size)
    normal_map = displacement_to_normal_map(mapper.position_map(verts[None]), mapper.normal_map(verts[None]), bumps)
    renderer = MeshRenderer(faces, image_size=32, uv=uv, faces_uv=faces)
    light = _light([0.6, -0.3, 1.0])
    bumped = renderer(verts[None], _camera(), lights=light, displacement_map=bumps)
    mapped = renderer(verts[None], _camera(), lights=light, normal_map=normal_map)
    m = bumped.mask.bool().expand(-1, 3, -1, -1)
    assert (bumped.image[m] - mapped.image[m]).abs().mean() < 0.01
    with pytest.raises(ValueError, match="not both"):
        renderer(verts[None], _camera(), lights=light, displacement_map=bumps, normal_map=normal_map)


def test_bump_follows_a_rotated_perspective_camera():
    """Rotating the world and the camera together leaves the image unchanged (the tangent frame turns too)."""
    verts, faces, uv = _quad(4)
    renderer = MeshRenderer(faces, image_size=24, uv=uv, faces_uv=faces)
    disp = _ramp(32, 0.4, 0.3)
    sh = torch.zeros(1, 27)
    sh[:, [0, 9, 18]] = 0.7
    sh[:, [1, 10, 19]] = -0.3  # band 1: a light from +y
    sh[:, [3, 12, 21]] = -0.4  # and from +x

    def camera(rotation):
        return PerspectiveCamera(focal=torch.tensor([[40.0, 40.0]]), principal_point=torch.tensor([[12.0, 12.0]]),
                                 image_size=24, rotation=rotation[None], translation=torch.tensor([[0.0, 0.0, -3.0]]))

    plain = renderer(verts[None], camera(torch.eye(3)), sh_coeffs=sh, displacement_map=disp)
    rot = axis_angle_to_matrix(torch.tensor([[0.3, -0.5, 0.2]]))[0]
    turned = renderer((verts @ rot)[None], camera(rot), sh_coeffs=sh, displacement_map=disp)  # R (R^T x) = x
    torch.testing.assert_close(turned.image, plain.image, atol=1e-4, rtol=0)
    assert (plain.image - renderer(verts[None], camera(torch.eye(3)), sh_coeffs=sh).image).abs().max() > 0.05


def test_bump_shading_is_differentiable_in_the_displacement_map():
    verts, faces, uv = _quad(2, dtype=torch.float64)
    renderer = MeshRenderer(faces, image_size=8, uv=uv, faces_uv=faces)
    light = DirectionalLights(torch.tensor([[0.4, 0.3, 1.0]], dtype=torch.float64), torch.ones(1, 3,
                                                                                               dtype=torch.float64))
    cam = WeakPerspectiveCamera.from_params(torch.tensor([[1.0, 0.0, 0.0]], dtype=torch.float64))
    disp = (torch.rand(1, 1, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 0.1)

    def render(d):
        return renderer(verts[None], cam, lights=light, displacement_map=d).image

    assert torch.autograd.gradcheck(render, (disp.requires_grad_(True),), eps=1e-6, atol=1e-6)


def test_packed_sh_and_texture_lookups_match_the_per_pixel_forms(icosphere):
    verts, faces = icosphere(2)
    uv = (verts[:, :2] + 1) / 2
    renderer = MeshRenderer(faces, image_size=20, uv=uv, faces_uv=faces)
    gen = torch.Generator().manual_seed(1)
    sh = torch.randn(3, 27, generator=gen) * 0.3
    texture = torch.rand(3, 3, 8, 8, generator=gen)
    cam = WeakPerspectiveCamera.from_params(torch.tensor([[0.8, 0.0, 0.0], [0.6, 0.2, 0.0], [0.9, -0.1, 0.1]]))
    out = renderer(verts[None].expand(3, -1, -1), cam, texture=texture, sh_coeffs=sh)
    frags = out.fragments
    normals = out.shading.permute(0, 2, 3, 1)  # shading of each pixel, per image
    from facelab.render import interpolate, vertex_normals

    n = F.normalize(interpolate(vertex_normals(cam.to_view(verts[None].expand(3, -1, -1)), faces), frags), dim=-1)
    per_pixel = sh_shading(n, sh_coeffs_to_bands(sh)[:, None, None])
    m = frags.mask
    torch.testing.assert_close(normals[m], per_pixel[m], atol=1e-5, rtol=0)
    uv_img = interpolate(uv[faces], frags, per_corner=True)
    dense = sample_texture(texture, uv_img).permute(0, 2, 3, 1).reshape(-1, 3)[frags.pix_idx]
    packed = sample_texture_packed(texture, uv_img.reshape(-1, 2)[frags.pix_idx], frags.batch_idx)
    torch.testing.assert_close(packed, dense)
    shared = sample_texture_packed(texture[:1], uv_img.reshape(-1, 2)[frags.pix_idx], frags.batch_idx)
    torch.testing.assert_close(shared[frags.batch_idx == 0], dense[frags.batch_idx == 0])


def test_backface_factor_darkens_only_back_faces():
    verts, faces, uv = _quad(2)
    both = torch.cat([faces[:4], faces[4:].flip(1)])  # half the triangles wound clockwise
    dark = MeshRenderer(both, image_size=16, backface_factor=0.25)(verts[None], _camera(), albedo=0.8)
    m = dark.fragments.mask[0]
    front = torch.isin(dark.fragments.pix_to_face[0][m], torch.arange(4))
    torch.testing.assert_close(dark.image[0, 0][m], torch.where(front, 0.8, 0.2))
    assert front.any() and not front.all()


def test_point_sampled_slopes_are_the_lookup_of_the_gradient_map():
    verts, faces, uv = _quad(4)
    renderer = MeshRenderer(faces, image_size=24, uv=uv, faces_uv=faces)
    disp = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(3))
    cam = WeakPerspectiveCamera.from_params(torch.tensor([[1.0, 0.0, 0.0], [0.8, 0.1, 0.0]]))
    frags = renderer(verts[None].expand(2, -1, -1), cam).fragments
    from facelab.render import interpolate_packed
    from facelab.render.renderer import _Pixels

    px = _Pixels(frags, 2)
    px.grid = interpolate_packed(renderer.corner_grid, frags, per_corner=True)
    pix_uv = interpolate_packed(renderer.corner_uv, frags, per_corner=True)
    slopes = renderer._displacement_slopes(disp, px)
    reference = sample_texture_packed(displacement_gradient(disp), pix_uv, frags.batch_idx)
    inner = ((pix_uv > 1.5 / 16) & (pix_uv < 1 - 1.5 / 16)).all(-1)  # one-sided differences at the border
    assert inner.sum() > 100
    torch.testing.assert_close(slopes[inner], reference[inner], atol=1e-4, rtol=1e-5)


def test_bump_normals_formula():
    n = torch.tensor([[0.0, 0.0, 1.0]])
    out = bump_normals(n, torch.tensor([[2.0, 0.0]]), torch.tensor([[0.5, 0.0, 0.0]]), torch.zeros(1, 3), scale=0.1)
    torch.testing.assert_close(out, F.normalize(torch.tensor([[-0.1, 0.0, 1.0]]), dim=-1))
