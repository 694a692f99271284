"""Fixtures for the SMIRK building blocks: the synthetic FLAME (50 expressions) and a projected test scene."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from facelab.morphable import Flame, FlameParams
from facelab.render import WeakPerspectiveCamera, ndc_to_pixels, rasterize


@pytest.fixture(scope="session")
def flame() -> Flame:
    return Flame("synthetic", n_expression=50)


@dataclass
class Scene:
    """Two frontal-ish synthetic FLAME heads projected to a small square image."""

    size: int
    verts_ndc: torch.Tensor  # (B, V, 3)
    verts_px: torch.Tensor  # (B, V, 2)
    landmarks_px: torch.Tensor  # (B, 105, 2)
    render_mask: torch.Tensor  # (B, 1, H, W), the face region's coverage
    faces: torch.Tensor  # (F, 3)


@pytest.fixture(scope="session")
def scene(flame) -> Scene:
    size, b = 64, 2
    gen = torch.Generator().manual_seed(0)
    params = FlameParams(identity=0.5 * torch.randn(b, 300, generator=gen),
                         expression=0.5 * torch.randn(b, 50, generator=gen),
                         global_pose=torch.tensor([[0.0, 0.3, 0.0], [0.1, -0.2, 0.0]]))
    with torch.no_grad():
        mesh = flame(params)
    cam = WeakPerspectiveCamera.from_params(torch.tensor([[7.0, 0.0, 0.0], [6.0, 0.01, -0.01]]))
    verts_ndc = cam.project(mesh.verts)
    face_faces = flame.faces[flame.region_faces("face")]
    frags = rasterize(verts_ndc, face_faces, size)
    return Scene(size=size, verts_ndc=verts_ndc, verts_px=ndc_to_pixels(verts_ndc, size),
                 landmarks_px=ndc_to_pixels(cam.project(mesh.landmarks_mp), size),
                 render_mask=frags.mask[:, None].float(), faces=flame.faces)
