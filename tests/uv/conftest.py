"""Tiny UV-mapped meshes for the UV tests."""

from __future__ import annotations

import math

import pytest
import torch


def grid_mesh(n: int = 8, height=None):
    """An (n+1)^2-vertex grid over [-1, 1]^2 facing +z, UVs = ((x + 1) / 2, (y + 1) / 2), CCW faces.

    Returns (verts (V, 3), faces (F, 3), uv (V, 2), faces_uv (F, 3)); ``height(x, y)`` sets z.
    """
    t = torch.linspace(-1, 1, n + 1, dtype=torch.float64)
    y, x = torch.meshgrid(t, t, indexing="ij")
    z = torch.zeros_like(x) if height is None else height(x, y)
    verts = torch.stack([x, y, z], -1).reshape(-1, 3).float()
    idx = torch.arange((n + 1) ** 2).view(n + 1, n + 1)
    a, b, c, d = idx[:-1, :-1], idx[:-1, 1:], idx[1:, 1:], idx[1:, :-1]  # (x, y), (x+1, y), (x+1, y+1), (x, y+1)
    faces = torch.cat([torch.stack([a, b, c], -1).reshape(-1, 3), torch.stack([a, c, d], -1).reshape(-1, 3)])
    uv = (verts[:, :2] + 1) / 2
    return verts, faces, uv, faces.clone()


def cylinder_mesh(around: int = 12, rows: int = 4):
    """An open cylinder around y with a UV seam: V = around * (rows + 1) vertices, (around + 1) UV columns."""
    ang = torch.arange(around) * 2 * math.pi / around
    ys = torch.linspace(-1, 1, rows + 1)
    verts = torch.stack([torch.sin(ang)[None].expand(rows + 1, -1), ys[:, None].expand(-1, around),
                         torch.cos(ang)[None].expand(rows + 1, -1)], -1).reshape(-1, 3)
    uv = torch.stack(torch.meshgrid(torch.arange(around + 1) / around, (ys + 1) / 2, indexing="xy"), -1).reshape(-1, 2)
    faces, faces_uv = [], []
    for r in range(rows):
        for j in range(around):
            v = [r * around + j, r * around + (j + 1) % around, (r + 1) * around + (j + 1) % around,
                 (r + 1) * around + j]
            t = [r * (around + 1) + j, r * (around + 1) + j + 1, (r + 1) * (around + 1) + j + 1,
                 (r + 1) * (around + 1) + j]
            faces += [[v[0], v[1], v[2]], [v[0], v[2], v[3]]]
            faces_uv += [[t[0], t[1], t[2]], [t[0], t[2], t[3]]]
    return verts, torch.tensor(faces), uv, torch.tensor(faces_uv)


@pytest.fixture(scope="session")
def make_grid():
    return grid_mesh


@pytest.fixture(scope="session")
def make_cylinder():
    return cylinder_mesh


@pytest.fixture(scope="session")
def icosphere_mesh():
    import trimesh

    mesh = trimesh.creation.icosphere(subdivisions=1)
    return torch.as_tensor(mesh.vertices, dtype=torch.float32), torch.as_tensor(mesh.faces, dtype=torch.long)
