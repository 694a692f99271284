"""Tiny meshes and helpers shared by the rendering tests."""

from __future__ import annotations

import pytest
import torch


def _icosphere(subdivisions: int) -> tuple[torch.Tensor, torch.Tensor]:
    import trimesh

    mesh = trimesh.creation.icosphere(subdivisions=subdivisions)
    return torch.as_tensor(mesh.vertices, dtype=torch.float32), torch.as_tensor(mesh.faces, dtype=torch.long)


@pytest.fixture(scope="session")
def icosphere():
    """Factory: (V, 3) unit icosphere vertices (outward CCW faces) and (F, 3) faces."""
    return _icosphere


@pytest.fixture(scope="session")
def has_pytorch3d() -> bool:
    try:
        import pytorch3d._C  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.fixture
def require_pytorch3d(has_pytorch3d):
    if not has_pytorch3d:
        pytest.skip("pytorch3d (with its compiled _C extension) is not installed")


def sphere_scene(icosphere_fn, batch: int, subdivisions: int = 3, seed: int = 0, radius: float = 0.8):
    """A batch of spheres in NDC at random offsets, depth 5 +- radius (helper for agreement tests)."""
    verts, faces = icosphere_fn(subdivisions)
    gen = torch.Generator().manual_seed(seed)
    shift = (torch.rand(batch, 1, 3, generator=gen) - 0.5) * torch.tensor([0.6, 0.6, 0.0])
    ndc = verts[None] * radius + shift
    ndc[..., 2] = 5.0 - verts[None, :, 2].expand(batch, -1) * radius
    return ndc, faces


@pytest.fixture(scope="session")
def make_sphere_scene(icosphere):
    return lambda *args, **kwargs: sphere_scene(icosphere, *args, **kwargs)
