"""Normals, directional Lambertian lights and spherical-harmonics shading."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from facelab.render.shading import (
    directional_lights,
    face_normals,
    lambertian,
    sh_basis,
    sh_coeffs_to_bands,
    sh_shading,
    shape_lights,
    vertex_normals,
)


def test_normals_point_outward_on_a_sphere(icosphere):
    verts, faces = icosphere(2)
    verts = verts[None].double()
    vn = vertex_normals(verts, faces)
    torch.testing.assert_close(vn.norm(dim=-1), torch.ones(1, verts.shape[1], dtype=torch.float64))
    assert (vn * F.normalize(verts, dim=-1)).sum(-1).min() > 0.99
    fn = face_normals(verts, faces)
    centres = verts[:, faces].mean(2)
    assert ((fn * centres).sum(-1) > 0).all()
    tri = torch.tensor([[[0.0, 0, 0], [1, 0, 0], [0, 1, 0]]])
    torch.testing.assert_close(face_normals(tri, torch.tensor([[0, 1, 2]])), torch.tensor([[[0.0, 0, 1]]]))


def test_directional_lights_checks_its_directions():
    lights = directional_lights([[0.0, 0.0, 2.0]], intensity=0.5, dtype=torch.float64)
    assert lights.directions.dtype == torch.float64 and lights.intensities.tolist() == [[0.5, 0.5, 0.5]]
    with pytest.raises(ValueError, match=r"\(L, 3\)"):
        directional_lights([1.0, 0.0, 0.0])


def test_shape_lights_on_a_frontal_normal():
    lights = shape_lights()
    n = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, -1.0], [1.0, 0.0, 0.0]])
    shade = lambertian(n, lights.directions, lights.intensities)
    frontal = 1.7 * (4 / math.sqrt(3) + 1) / 5  # four lights at 1/sqrt(3), one at 1, averaged
    side = 1.7 * (2 / math.sqrt(3)) / 5  # (1, +-1, 1) lights only
    torch.testing.assert_close(shade, torch.tensor([[frontal] * 3, [0.0] * 3, [side] * 3]))
    # Per-pixel (broadcast) lights and scalar intensities give the same numbers.
    per_pixel = lambertian(n, lights.directions.expand(3, 5, 3), lights.intensities[:, 0].expand(3, 5))
    torch.testing.assert_close(per_pixel[:, 0], shade[:, 0])


def _deep3d_reference(normals: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """Deep3DFaceRecon's ``compute_color`` shading, transcribed from its equations (B, N, 3) x (B, 27)."""
    a0, a1, a2 = math.pi, 2 * math.pi / math.sqrt(3.0), 2 * math.pi / math.sqrt(8.0)
    c0, c1, c2 = 1 / math.sqrt(4 * math.pi), math.sqrt(3.0) / math.sqrt(4 * math.pi), 3 * math.sqrt(5.0) / math.sqrt(
        12 * math.pi)
    nx, ny, nz = normals[..., 0], normals[..., 1], normals[..., 2]
    y = torch.stack([a0 * c0 * torch.ones_like(nx), -a1 * c1 * ny, a1 * c1 * nz, -a1 * c1 * nx, a2 * c2 * nx * ny,
                     -a2 * c2 * ny * nz, 0.5 * a2 * c2 / math.sqrt(3.0) * (3 * nz**2 - 1), -a2 * c2 * nx * nz,
                     0.5 * a2 * c2 * (nx**2 - ny**2)], -1)
    g = gamma.reshape(-1, 3, 9).permute(0, 2, 1)
    return torch.stack([y @ g[:, :, c:c + 1] for c in range(3)], -1)[..., 0, :]


def test_sh_matches_deep3dfacerecon_and_layouts():
    gen = torch.Generator().manual_seed(0)
    normals = F.normalize(torch.randn(2, 50, 3, generator=gen), dim=-1)
    gamma = torch.randn(2, 27, generator=gen) * 0.3
    ours = sh_shading(normals, gamma[:, None])
    torch.testing.assert_close(ours, _deep3d_reference(normals, gamma), rtol=1e-5, atol=1e-6)
    bands = sh_coeffs_to_bands(gamma)
    assert bands.shape == (2, 9, 3)
    torch.testing.assert_close(bands[:, :, 1], gamma[:, 9:18])  # channel-major: green is 9..17
    torch.testing.assert_close(sh_shading(normals, bands[:, None]), ours)


def test_sh_deca_basis_and_ambient_term():
    n = torch.tensor([[0.0, 0.0, 1.0], [0.6, 0.0, 0.8]])
    basis = sh_basis(n, "deca")
    assert basis.shape == (2, 9)
    torch.testing.assert_close(basis[:, 0], torch.full((2,), 1 / math.sqrt(4 * math.pi)))
    torch.testing.assert_close(basis[1, 1] / basis[1, 3], torch.tensor(0.6 / 0.8))  # x and z bands share a factor
    ambient = torch.zeros(27)
    ambient[:3] = 1.0  # DECA flat layout is band-major: band 0 of r, g, b
    shade = sh_shading(n, ambient, "deca")
    torch.testing.assert_close(shade, torch.full((2, 3), 1 / math.sqrt(4 * math.pi)))
