"""Image grids, overlays, landmark drawing and mesh export (facelab.viz)."""

from __future__ import annotations

import numpy as np
import torch

from facelab.io.obj import read_obj
from facelab.render import MeshRenderer, WeakPerspectiveCamera
from facelab.viz import blend, draw_landmarks, export_obj, export_ply, image_grid, mesh_overlay, rows_grid


def test_grids_have_the_tensorboard_layout():
    images = torch.rand(5, 3, 8, 10)
    grid = image_grid(images, ncol=3, padding=1)
    assert grid.shape == (3, 2 * 9 + 1, 3 * 11 + 1)
    torch.testing.assert_close(grid[:, 1:9, 1:11], images[0])
    panel = rows_grid(images, torch.rand(5, 1, 8, 10), max_images=4, padding=0)
    assert panel.shape == (3, 16, 40)


def test_landmarks_and_blend():
    images = torch.zeros(2, 3, 16, 16)
    points = torch.tensor([[[4.5, 6.5], [100.0, 3.0]], [[0.2, 0.2], [float("nan"), 1.0]]])
    out = draw_landmarks(images, points, color=(1.0, 0.0, 0.0), radius=1.0)
    assert out[0, 0, 6, 4] == 1 and out[0, 1, 6, 4] == 0  # pixel (row 6, col 4) holds (4.5, 6.5)
    assert out[0, 0, 6, 6] == 0 and out[1, 0, 0, 0] == 1
    assert images.sum() == 0  # input untouched
    mask = torch.zeros(2, 1, 16, 16)
    mask[..., :8] = 1
    mixed = blend(torch.zeros(2, 3, 16, 16), torch.ones(2, 3, 16, 16), mask, alpha=0.25)
    assert mixed[..., :8].eq(0.25).all() and mixed[..., 8:].eq(0).all()


def test_mesh_overlay_shape(icosphere):
    verts, faces = icosphere(1)
    renderer = MeshRenderer(faces, image_size=24)
    cam = WeakPerspectiveCamera.from_params(torch.tensor([[0.7, 0.0, 0.0]]))
    out = mesh_overlay(torch.zeros(1, 3, 24, 24), verts[None], cam, renderer,
                       landmarks=cam.project_pixels(verts[None, :3], 24))
    assert out.shape == (1, 3, 24, 24) and out.max() > 0


def test_export_obj_with_seams_and_texture_and_ply(tmp_path):
    verts = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]], dtype=float)
    faces = np.array([[0, 1, 2], [0, 2, 3]])
    uv = np.array([[0, 0], [1, 0], [1, 1], [0, 1], [0.5, 0.5]])
    faces_uv = np.array([[0, 1, 2], [4, 2, 3]])  # vertex 0 has two UVs: a seam
    path = export_obj(tmp_path / "mesh.obj", verts, faces, uv, faces_uv, texture=torch.rand(3, 4, 4))
    assert (tmp_path / "mesh.mtl").exists() and (tmp_path / "mesh.png").exists()
    assert "map_Kd mesh.png" in (tmp_path / "mesh.mtl").read_text()
    mesh = read_obj(path)
    assert mesh.faces.shape == (2, 3)
    np.testing.assert_allclose(mesh.verts[mesh.faces], verts[faces])
    np.testing.assert_allclose(mesh.uv[mesh.faces_uv], uv[faces_uv], atol=1e-7)
    export_obj(tmp_path / "plain.obj", verts, faces)
    assert read_obj(tmp_path / "plain.obj").faces.shape == (2, 3)
    import trimesh

    ply = trimesh.load(export_ply(tmp_path / "mesh.ply", verts, faces, colors=np.full((4, 3), 0.5)), process=False)
    assert ply.vertices.shape == (4, 3) and (ply.visual.vertex_colors[:, 0] == 128).all()
