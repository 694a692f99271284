"""MeshRenderer: SMIRK's gray render, textures, SH lighting, face subsets, gradients, a golden shaded image.

Regenerate the golden PNG with ``FACELAB_REGEN_GOLDEN=1 pytest tests/render/test_renderer.py``.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from facelab.render import MeshRenderer, PerspectiveCamera, WeakPerspectiveCamera, shape_lights
from facelab.render.camera import pixel_centers_ndc

GOLDEN_PNG = Path(__file__).parent / "golden" / "smirk_sphere_64.png"
ALBEDO = 180 / 255


def _sphere_camera(batch: int = 1, scale: float = 0.8) -> WeakPerspectiveCamera:
    return WeakPerspectiveCamera.from_params(torch.tensor([[scale, 0.0, 0.0]] * batch))


def test_smirk_render_gray_background_zero_and_frontal_value(icosphere):
    verts, faces = icosphere(3)
    renderer = MeshRenderer(faces, image_size=64)
    out = renderer(verts[None], _sphere_camera(), albedo=ALBEDO, lights=shape_lights())
    assert out.image.shape == (1, 3, 64, 64) and out.mask.shape == (1, 1, 64, 64)
    assert (out.image[out.mask.expand_as(out.image) == 0] == 0).all()  # background exactly 0
    assert torch.equal(out.mask[:, 0] > 0, out.fragments.mask)
    frontal = ALBEDO * 1.7 * (4 / math.sqrt(3) + 1) / 5
    centre = out.image[0, :, 31:33, 31:33]
    torch.testing.assert_close(centre, torch.full_like(centre, frontal), atol=5e-3, rtol=0)
    assert out.image.max() <= frontal + 1e-4
    assert (out.image[:, 0] == out.image[:, 1]).all()  # gray


def test_golden_shaded_sphere(icosphere):
    verts, faces = icosphere(3)
    out = MeshRenderer(faces, image_size=64)(verts[None], _sphere_camera(scale=0.75), albedo=ALBEDO,
                                             lights=shape_lights())
    img = (out.image[0].permute(1, 2, 0).clamp(0, 1).numpy() * 255).round().astype(np.uint8)
    if os.environ.get("FACELAB_REGEN_GOLDEN") == "1":
        Image.fromarray(img).save(GOLDEN_PNG)
    golden = np.asarray(Image.open(GOLDEN_PNG))
    diff = np.abs(img.astype(int) - golden.astype(int))
    assert (diff <= 1).mean() >= 0.995 and (golden > 0).mean() > 0.3


def test_face_subset_renders_only_those_faces(icosphere):
    verts, faces = icosphere(2)
    front = torch.nonzero(verts[faces].mean(1)[:, 2] > 0.3).squeeze(1)
    full = MeshRenderer(faces, image_size=48)(verts[None], _sphere_camera(), lights=shape_lights())
    part_renderer = MeshRenderer(faces, image_size=48, face_subset=front)
    part = part_renderer(verts[None], _sphere_camera(), lights=shape_lights())
    assert 0 < part.mask.sum() < full.mask.sum()
    assert (full.mask >= part.mask).all()
    covered = part.fragments.mask
    original = part_renderer.face_ids[part.fragments.pix_to_face[covered]]
    assert torch.equal(original, full.fragments.pix_to_face[covered])
    # Normals come from the full mesh, so the subset is shaded exactly like the full render where visible.
    torch.testing.assert_close(part.image * part.mask, full.image * part.mask)


def test_uv_texture_lookup_is_exact_for_a_linear_ramp():
    size = 32
    quad = torch.tensor([[[-0.9, -0.9, 0.0], [0.9, -0.9, 0.0], [0.9, 0.9, 0.0], [-0.9, 0.9, 0.0]]])
    faces = torch.tensor([[0, 1, 2], [0, 2, 3]])
    uv = (quad[0, :, :2] + 0.9) / 1.8
    renderer = MeshRenderer(faces, image_size=size, uv=uv, faces_uv=faces)
    texels = 16
    ramp_u = ((torch.arange(texels) + 0.5) / texels).expand(texels, -1)
    ramp_v = (1 - (torch.arange(texels) + 0.5) / texels)[:, None].expand(-1, texels)  # row 0 is v = 1
    texture = torch.stack([ramp_u, ramp_v, torch.ones_like(ramp_u)])[None]
    out = renderer(quad, _sphere_camera(scale=1.0), texture=texture)
    xy = pixel_centers_ndc(size)
    expected_uv = (xy + 0.9) / 1.8
    inner = (expected_uv > 0.5 / texels).all(-1) & (expected_uv < 1 - 0.5 / texels).all(-1)
    torch.testing.assert_close(out.image[0, 0][inner], expected_uv[..., 0][inner], atol=1e-5, rtol=0)
    torch.testing.assert_close(out.image[0, 1][inner], expected_uv[..., 1][inner], atol=1e-5, rtol=0)


def test_sh_perspective_render_has_gradients_everywhere(icosphere):
    verts, faces = icosphere(2)
    verts = verts[None].expand(2, -1, -1).clone().requires_grad_(True)  # BFM-sized: ~1 unit at distance 10
    sh = torch.zeros(2, 27)
    sh[:, [0, 9, 18]] = 0.8
    sh[:, [2, 11, 20]] = 0.3
    sh.requires_grad_(True)
    albedo = torch.full((2, verts.shape[1], 3), 0.6, requires_grad=True)
    cam = PerspectiveCamera.deep3d(batch_size=2, image_size=64)
    out = MeshRenderer(faces, image_size=64)(verts, cam, albedo=albedo, sh_coeffs=sh)
    assert out.mask.mean() > 0.2 and out.shading.shape == (2, 3, 64, 64)
    out.image.mean().backward()
    for t in (verts, sh, albedo):
        assert t.grad is not None and t.grad.abs().sum() > 0 and torch.isfinite(t.grad).all()


def test_shaded_render_gradients_match_finite_differences(icosphere):
    """d(loss)/d(model vertices) through projection, barycentrics, normals and SH shading (float64)."""
    verts, faces = icosphere(1)
    gen = torch.Generator().manual_seed(0)
    n_verts = verts.shape[0]
    verts = (verts.double() * (1 + 0.1 * torch.rand(n_verts, 1, generator=gen, dtype=torch.float64)))[None]
    colors = torch.rand(1, n_verts, 3, generator=gen, dtype=torch.float64)
    sh = torch.randn(1, 27, generator=gen, dtype=torch.float64) * 0.3
    weights = torch.rand(1, 3, 20, 20, generator=gen, dtype=torch.float64)
    cam = WeakPerspectiveCamera.from_params(torch.tensor([[0.7, 0.05, -0.02]], dtype=torch.float64))
    renderer = MeshRenderer(faces, image_size=20)

    def loss(v):
        return (renderer(v, cam, albedo=colors, sh_coeffs=sh).image * weights).sum()

    v = verts.clone().requires_grad_(True)
    grad, = torch.autograd.grad(loss(v), v)
    eps = 1e-6
    coords = torch.randperm(verts.numel(), generator=gen)[:36]  # a random subset keeps the test fast
    numeric = torch.zeros(len(coords), dtype=torch.float64)
    with torch.no_grad():
        for j, c in enumerate(coords):
            d = torch.zeros(verts.numel(), dtype=torch.float64)
            d[c] = eps
            d = d.view_as(verts)
            numeric[j] = (loss(verts + d) - loss(verts - d)) / (2 * eps)
    analytic = grad.reshape(-1)[coords]
    assert analytic.abs().max() > 1e-3
    torch.testing.assert_close(analytic, numeric, atol=1e-5, rtol=1e-4)


def test_normal_map_replaces_vertex_normals():
    quad = torch.tensor([[[-0.9, -0.9, 0.0], [0.9, -0.9, 0.0], [0.9, 0.9, 0.0], [-0.9, 0.9, 0.0]]])
    faces = torch.tensor([[0, 1, 2], [0, 2, 3]])
    renderer = MeshRenderer(faces, image_size=16, uv=(quad[0, :, :2] + 0.9) / 1.8, faces_uv=faces)
    tilted = torch.nn.functional.normalize(torch.tensor([0.6, 0.0, 0.8]), dim=0)
    normal_map = tilted[None, :, None, None].expand(1, 3, 8, 8)
    lights = shape_lights()
    flat = renderer(quad, _sphere_camera(scale=1.0), lights=lights)
    bumped = renderer(quad, _sphere_camera(scale=1.0), lights=lights, normal_map=normal_map)
    m = flat.mask.bool().expand(-1, 3, -1, -1)
    assert not torch.allclose(flat.image[m], bumped.image[m])
    expected = 1.7 * (2 * (0.8 + 0.6) / math.sqrt(3) + 2 * (0.8 - 0.6) / math.sqrt(3) + 0.8) / 5
    torch.testing.assert_close(bumped.image[m], torch.full_like(bumped.image[m], expected), atol=1e-5, rtol=0)


@pytest.mark.pytorch3d
def test_pytorch3d_backend_renders_the_same_image(require_pytorch3d, icosphere):
    verts, faces = icosphere(3)
    cam = _sphere_camera(batch=2)
    v = torch.stack([verts, verts * 0.9])
    images = [MeshRenderer(faces, image_size=(48, 56), backend=b)(v, cam, albedo=ALBEDO, lights=shape_lights()).image
              for b in ("torch", "pytorch3d")]
    assert (images[0] - images[1]).abs().max() < 1e-3


def test_synthetic_head_face_region_render():
    head_module = pytest.importorskip("facelab.morphable.synthetic.head")
    head = head_module.build_head(size="tiny", n_identity=1, n_expression=1)
    faces = torch.as_tensor(head.faces)
    verts = torch.as_tensor(head.verts, dtype=torch.float32)[None]
    from facelab.morphable.base import faces_in_region

    face_region = faces_in_region(faces, torch.as_tensor(head.regions["face"]))
    cam = WeakPerspectiveCamera.from_params(torch.tensor([[8.0, 0.0, 0.0]]))
    full = MeshRenderer(faces, image_size=32)(verts, cam, albedo=ALBEDO, lights=shape_lights())
    face = MeshRenderer(faces, image_size=32, face_subset=face_region)(verts, cam, albedo=ALBEDO,
                                                                       lights=shape_lights())
    assert 0 < face.mask.sum() < full.mask.sum()


def test_from_model_renders_a_named_region_of_flame():
    synthetic = pytest.importorskip("facelab.morphable.synthetic.flame")
    from facelab.morphable import Flame

    flame = Flame.from_arrays(synthetic.build_flame_arrays(seed=0, size="tiny"), n_shape=10, n_expression=10)
    verts = flame(flame.neutral_params(2)).verts
    cam = WeakPerspectiveCamera.from_params(torch.tensor([[8.0, 0.0, 0.0]] * 2))
    whole = MeshRenderer.from_model(flame, image_size=32)
    face = MeshRenderer.from_model(flame, region="face", image_size=32)
    assert face.faces.shape[0] < whole.faces.shape[0] and face.corner_uv is not None
    out_whole = whole(verts, cam, albedo=ALBEDO, lights=shape_lights())
    out_face = face(verts, cam, albedo=ALBEDO, lights=shape_lights())
    assert 0 < out_face.mask.sum() < out_whole.mask.sum()
    textured = face(verts, cam, texture=torch.rand(2, 3, 16, 16), lights=shape_lights())
    assert textured.image.shape == (2, 3, 32, 32)
