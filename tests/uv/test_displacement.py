"""Displacement maps: along-normal offsets (with subdivision) and displacement -> detail normal maps."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from facelab.uv import DisplacementMapper, UVMapper, displace_along_normals, displacement_to_normal_map


def test_displace_along_normals_moves_a_plane_along_z(make_grid):
    verts, faces, _, _ = make_grid(4)
    d = torch.rand(1, verts.shape[0])
    out = displace_along_normals(verts[None], faces, d)
    torch.testing.assert_close(out[0, :, :2], verts[:, :2])
    torch.testing.assert_close(out[0, :, 2], d[0])


def test_displacement_mapper_with_and_without_subdivision(make_grid):
    verts, faces, uv, faces_uv = make_grid(4)
    ramp = ((torch.arange(32) + 0.5) / 32).expand(32, -1)[None, None] * 0.2  # d = 0.2 u
    for levels, expected_verts in ((0, verts.shape[0]), (2, None)):
        mapper = DisplacementMapper(faces, uv, faces_uv, verts.shape[0], subdivisions=levels)
        dense = mapper(verts[None], ramp.expand(2, -1, -1, -1), scale=0.5)
        assert dense.shape == (2, mapper.num_verts, 3)
        if expected_verts is not None:
            assert mapper.num_verts == expected_verts
        assert mapper.faces.shape[0] == faces.shape[0] * 4**levels
        u = mapper.uv[mapper.vert_uv_pairs[:, 1]][:, 0]
        z = dense[0, mapper.vert_uv_pairs[:, 0], 2]
        inner = (u > 1 / 32) & (u < 1 - 1 / 32)
        torch.testing.assert_close(z[inner], 0.5 * 0.2 * u[inner], atol=1e-5, rtol=0)


def test_displacement_to_normal_map(make_grid):
    verts, faces, uv, faces_uv = make_grid(4)
    mapper = UVMapper(faces, uv, faces_uv, size=32)
    pos, normals = mapper.position_map(verts[None]), mapper.normal_map(verts[None])
    flat = displacement_to_normal_map(pos, normals, torch.zeros(1, 1, 32, 32))
    torch.testing.assert_close(flat, normals)
    # d = a u on the plane x = 2u - 1: z = a (x + 1) / 2, so the normal is (-a / 2, 0, 1) normalised.
    a = 0.8
    u = ((torch.arange(32) + 0.5) / 32).expand(32, -1)[None, None]
    detail = displacement_to_normal_map(pos, normals, a * u)
    expected = F.normalize(torch.tensor([-a / 2, 0.0, 1.0]), dim=0)
    torch.testing.assert_close(detail[0].permute(1, 2, 0), expected.expand(32, 32, 3), atol=1e-5, rtol=0)
    # Outside the mask the coarse normal is kept.
    mask = torch.zeros(1, 1, 32, 32)
    mask[..., 8:24, 8:24] = 1
    partial = displacement_to_normal_map(pos, normals, a * u, mask=mask)
    torch.testing.assert_close(partial[..., :8, :], normals[..., :8, :])
    torch.testing.assert_close(partial[..., 10, 10], expected[None])
