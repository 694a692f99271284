"""Midpoint subdivision of meshes and their UV layouts."""

from __future__ import annotations

import torch

from facelab.render.shading import face_normals
from facelab.uv import MeshSubdivider, subdivide_topology


def _edges(faces: torch.Tensor) -> torch.Tensor:
    e = torch.cat([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]).sort(dim=1).values
    return torch.unique(e, dim=0, return_counts=True)[1]


def test_counts_midpoints_and_winding(make_grid):
    verts, faces, uv, faces_uv = make_grid(3)
    sub = subdivide_topology(faces, verts.shape[0], faces_uv, uv.shape[0])
    assert sub.faces.shape == (4 * faces.shape[0], 3)
    assert sub.edges.shape[0] == _edges(faces).shape[0]
    mod = MeshSubdivider(faces, verts.shape[0], uv, faces_uv)
    dense = mod(verts[None])[0]
    assert dense.shape[0] == verts.shape[0] + sub.edges.shape[0] == mod.num_verts
    torch.testing.assert_close(dense[verts.shape[0]:], verts[sub.edges].mean(1))
    assert (face_normals(dense[None], mod.faces)[0, :, 2] > 0.99).all()  # winding kept
    # On this grid UVs are the positions: the dense UVs must still be.
    torch.testing.assert_close(mod.uv[mod.faces_uv], (dense[mod.faces][..., :2] + 1) / 2)


def test_closed_mesh_stays_closed_and_seams_stay_seams(icosphere_mesh, make_cylinder):
    verts, faces = icosphere_mesh
    mod = MeshSubdivider(faces, verts.shape[0], iterations=2)
    assert mod.faces.shape[0] == 16 * faces.shape[0]
    counts = _edges(mod.faces)
    assert (counts == 2).all()  # every edge shared by exactly two faces
    assert mod.num_verts - counts.shape[0] + mod.faces.shape[0] == 2  # Euler characteristic of a sphere
    cverts, cfaces, cuv, cfaces_uv = make_cylinder(around=8, rows=2)
    cyl = MeshSubdivider(cfaces, cverts.shape[0], cuv, cfaces_uv)
    dense = cyl(cverts[None])[0]
    # Each dense corner's u is its angle / 2 pi (u = 1 on the seam's second copy).
    angle = torch.atan2(dense[cyl.faces][..., 0], dense[cyl.faces][..., 2]) / (2 * torch.pi) % 1.0
    u = cyl.uv[cyl.faces_uv][..., 0]
    wrapped = torch.where((u - angle).abs() > 0.5, angle + 1, angle)
    torch.testing.assert_close(u, wrapped, atol=1e-5, rtol=0)
