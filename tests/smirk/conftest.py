"""Fixtures for the SMIRK building blocks: the synthetic FLAME (50 expressions) and a projected test scene."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch

from facelab.data.cache import CacheWriter, FaceRecord
from facelab.data.synthetic import SyntheticFaceDataset, SyntheticFaceSample
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


# -------------------------------------------------------------------------- a preprocess cache of synthetic renders
SIZE, N = 64, 4  # the cache's crop side and faces


@pytest.fixture(scope="session")
def synthetic_truth() -> SyntheticFaceSample:
    """Four synthetic FLAME renders (64²) with their true landmarks."""
    data = SyntheticFaceDataset(num_samples=N, image_size=SIZE, uv_size=64, seed=3)
    return SyntheticFaceSample.collate(data.generate(list(range(N))))


@pytest.fixture(scope="session")
def synthetic_cache(synthetic_truth, tmp_path_factory):
    """The renders as a preprocessing cache: 478 mediapipe points (the 105 true ones, the rest at their centroid),
    FAN 68 on even samples only, the hull mask."""
    root = tmp_path_factory.mktemp("synthetic_cache")
    writer = CacheWriter(root)
    from smirk.data import flame_mediapipe_indices

    indices = flame_mediapipe_indices("synthetic")
    t = synthetic_truth
    for i in range(N):
        mp = t.landmarks_mp_pix[i].numpy()
        full = np.repeat(mp.mean(0, keepdims=True), 478, axis=0)
        full[indices.numpy()] = mp
        image = (t.image[i].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        record = FaceRecord(image=image, landmarks_mp=full, mask=(t.hull_mask[i, 0] > 0.5).numpy().astype(np.uint8),
                            matrix=np.eye(2, 3, dtype=np.float32), score=1.0, source=f"render_{i}.png",
                            landmarks_fan=t.landmarks68_pix[i].numpy() if i % 2 == 0 else None)
        writer.write_item(f"render_{i}", f"render_{i}.png", -1, [record])
    writer.write_report()
    return root


