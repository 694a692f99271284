"""Umeyama against trimesh's Procrustes, exact closest points (brute force, pytorch3d, a sphere scan against an
icosphere), ICP recovering a known rigid motion, point-to-plane distances."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
import trimesh
from scipy.spatial.transform import Rotation

from facelab.metrics import (
    RigidTransform,
    closest_point_on_triangle,
    closest_points_on_mesh,
    rigid_align,
    rigid_icp,
    scan_to_mesh_distance,
)

ROTATION = Rotation.from_rotvec([0.1, -0.05, 0.08]).as_matrix()
SHIFT = np.array([0.05, -0.03, 0.02])


def _icosphere(subdivisions: int = 3) -> tuple[trimesh.Trimesh, torch.Tensor, torch.Tensor]:
    sphere = trimesh.creation.icosphere(subdivisions)
    return sphere, torch.tensor(sphere.vertices), torch.tensor(sphere.faces)


def _blob() -> tuple[torch.Tensor, torch.Tensor, trimesh.Trimesh]:
    """An asymmetric closed surface (an ellipsoid with a bump): ICP has one right answer."""
    sphere = trimesh.creation.icosphere(3)
    v = sphere.vertices * np.array([1.0, 0.7, 0.5])
    v = v + 0.3 * np.exp(-8 * ((v - np.array([0.6, 0.3, 0.2])) ** 2).sum(1))[:, None] * v
    mesh = trimesh.Trimesh(v, sphere.faces, process=False)
    return torch.tensor(v), torch.tensor(sphere.faces), mesh


# ------------------------------------------------------------------------------------------------ Umeyama
@pytest.mark.parametrize("scale", [False, True])
def test_rigid_align_matches_trimesh_procrustes(scale):
    g = torch.Generator().manual_seed(0)
    src = torch.randn(2, 40, 3, generator=g, dtype=torch.float64)
    exact = 1.3 * src @ torch.tensor(ROTATION.T) + torch.tensor(SHIFT)
    noisy = exact + 0.01 * torch.randn(2, 40, 3, generator=g, dtype=torch.float64)
    for dst in (exact, noisy):
        t = rigid_align(src, dst, scale=scale)
        assert torch.allclose(torch.linalg.det(t.rotation), torch.ones(2, dtype=torch.float64))
        for b in range(2):
            ref, _, _ = trimesh.registration.procrustes(src[b].numpy(), dst[b].numpy(), reflection=False, scale=scale)
            if dst is exact or not scale:
                assert np.abs(t.matrix()[b].numpy() - ref).max() < 1e-10
            else:  # trimesh's scale is the ratio of the RMS spreads; Umeyama's is the least-squares one
                rot = ref[:3, :3] / np.cbrt(np.linalg.det(ref[:3, :3]))
                assert np.abs(t.rotation[b].numpy() - rot).max() < 1e-10
                ours = (t.apply(src)[b] - dst[b]).square().sum()
                theirs = ((src[b].numpy() @ ref[:3, :3].T + ref[:3, 3] - dst[b].numpy()) ** 2).sum()
                assert float(ours) < theirs


def test_rigid_align_recovers_a_similarity_and_never_reflects():
    src = torch.randn(30, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    dst = 0.8 * src @ torch.tensor(ROTATION.T) + torch.tensor(SHIFT)
    t = rigid_align(src, dst, scale=True)
    assert torch.allclose(t.rotation[0], torch.tensor(ROTATION), atol=1e-10)
    assert float(t.scale[0]) == pytest.approx(0.8) and torch.allclose(t.apply(src), dst, atol=1e-10)
    mirrored = src * torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64)  # the best orthogonal map is a reflection
    assert float(torch.linalg.det(rigid_align(src, mirrored).rotation[0])) == pytest.approx(1.0)


def test_rigid_align_weights_ignore_zero_weight_outliers():
    src = torch.randn(20, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    dst = src @ torch.tensor(ROTATION.T) + torch.tensor(SHIFT)
    dst[:3] += 5.0  # outliers
    w = torch.ones(20, dtype=torch.float64)
    w[:3] = 0
    t = rigid_align(src, dst, w)
    assert torch.allclose(t.rotation[0], torch.tensor(ROTATION), atol=1e-10)


def test_rigid_align_is_differentiable():
    src = torch.randn(1, 6, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    dst = (src @ torch.tensor(ROTATION.T) + 0.1 * torch.randn(1, 6, 3, dtype=torch.float64)).requires_grad_()
    assert torch.autograd.gradcheck(lambda y: rigid_align(src, y, scale=True).apply(src), (dst,))


def test_rigid_transform_compose_and_matrix():
    a = rigid_align(torch.randn(10, 3, dtype=torch.float64), torch.randn(10, 3, dtype=torch.float64), scale=True)
    two = torch.tensor([2.0], dtype=torch.float64)
    b = RigidTransform(torch.tensor(ROTATION)[None], torch.tensor(SHIFT)[None], two)
    x = torch.randn(7, 3, dtype=torch.float64)
    assert torch.allclose(b.compose(a).apply(x), b.apply(a.apply(x)))
    homogeneous = torch.cat([x, torch.ones(7, 1, dtype=torch.float64)], dim=1) @ b.matrix()[0].T
    assert torch.allclose(homogeneous[:, :3], b.apply(x))
    with pytest.raises(ValueError, match="batch size 1"):
        RigidTransform.identity(2).apply(x.float())


# ------------------------------------------------------------------------------------------------ closest points
def test_closest_point_on_triangle_in_every_voronoi_region():
    a, b, c = (torch.tensor(v, dtype=torch.float64) for v in ([0.0, 0, 0], [2.0, 0, 0], [0.0, 2, 0]))
    cases = {  # query -> closest point
        (0.5, 0.5, 3.0): (0.5, 0.5, 0.0),  # face interior
        (-1.0, -1.0, 0.5): (0.0, 0.0, 0.0),  # vertex A
        (3.0, -1.0, 0.0): (2.0, 0.0, 0.0),  # vertex B
        (-1.0, 3.0, 1.0): (0.0, 2.0, 0.0),  # vertex C
        (1.0, -2.0, 0.0): (1.0, 0.0, 0.0),  # edge AB
        (-2.0, 1.0, 0.0): (0.0, 1.0, 0.0),  # edge AC
        (2.0, 2.0, 0.0): (1.0, 1.0, 0.0),  # edge BC
    }
    p = torch.tensor(list(cases), dtype=torch.float64)
    expected = torch.tensor(list(cases.values()), dtype=torch.float64)
    assert torch.allclose(closest_point_on_triangle(p, a, b, c), expected, atol=1e-12)


def test_closest_point_on_triangle_agrees_with_dense_sampling():
    g = torch.Generator().manual_seed(4)
    tri = torch.randn(3, 3, generator=g, dtype=torch.float64)
    p = 2 * torch.randn(50, 3, generator=g, dtype=torch.float64)
    steps = torch.linspace(0, 1, 301, dtype=torch.float64)
    u, v = torch.meshgrid(steps, steps, indexing="ij")
    keep = (u + v) <= 1
    samples = tri[0] + u[keep, None] * (tri[1] - tri[0]) + v[keep, None] * (tri[2] - tri[0])
    dense = torch.cdist(p, samples).amin(dim=1)
    exact = (closest_point_on_triangle(p, tri[0], tri[1], tri[2]) - p).norm(dim=-1)
    assert torch.all(exact <= dense + 1e-12) and torch.allclose(exact, dense, atol=2e-2)


def test_pruned_search_equals_brute_force_over_every_triangle():
    verts, faces, _ = _blob()
    g = torch.Generator().manual_seed(5)
    query = 1.2 * torch.randn(150, 3, generator=g, dtype=torch.float64)
    near = closest_points_on_mesh(query, verts, faces, backend="torch", chunk=64)  # several chunks
    tri = verts[faces]
    every = closest_point_on_triangle(query[:, None], tri[None, :, 0], tri[None, :, 1], tri[None, :, 2])
    brute = (every - query[:, None]).norm(dim=-1)  # (N, F)
    assert torch.allclose(near.distances, brute.amin(dim=1), atol=1e-12)
    assert torch.allclose((near.points - query).norm(dim=-1), near.distances, atol=1e-12)
    assert torch.allclose(brute.gather(1, near.face_ids[:, None])[:, 0], near.distances, atol=1e-12)


def test_closest_points_agree_with_pytorch3d():
    if importlib.util.find_spec("pytorch3d") is None:
        pytest.skip("pytorch3d is not installed")
    from pytorch3d.loss.point_mesh_distance import point_face_distance

    verts, faces, _ = _blob()
    query = 1.2 * torch.randn(200, 3, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    ours = closest_points_on_mesh(query, verts, faces, backend="torch").distances
    sq = point_face_distance(query.float(), torch.tensor([0]), verts[faces].float(), torch.tensor([0]), len(query),
                             1e-9)
    assert torch.allclose(ours.float(), sq.sqrt(), atol=1e-5)


@pytest.mark.skipif(importlib.util.find_spec("rtree") is None, reason="trimesh's closest_point needs rtree")
def test_torch_backend_matches_trimesh():
    verts, faces, _ = _blob()
    query = 1.2 * torch.randn(200, 3, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    a = closest_points_on_mesh(query, verts, faces, backend="torch")
    b = closest_points_on_mesh(query, verts, faces, backend="trimesh")
    assert torch.allclose(a.distances, b.distances, atol=1e-10)


def test_sphere_scan_to_icosphere_against_the_analytic_distance():
    sphere, verts, faces = _icosphere(3)
    # along each face normal through the face centre the closest point is the centre's foot: R - h_f exactly
    h = (sphere.triangles_center * sphere.face_normals).sum(1)
    for radius in (1.3, 0.8):
        scan = torch.tensor(radius * sphere.face_normals)
        dist = scan_to_mesh_distance(scan, verts, faces)
        assert np.abs(dist.numpy() - np.abs(radius - h)).max() < 1e-12
    # random points on a sphere of radius R: |R - 1| up to the polyhedron's sagitta (1 - min h)
    rng = np.random.default_rng(0)
    dirs = rng.normal(size=(500, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    radii = rng.uniform(0.5, 1.5, size=500)
    dist = scan_to_mesh_distance(torch.tensor(dirs * radii[:, None]), verts, faces).numpy()
    assert np.abs(dist - np.abs(radii - 1)).max() <= 1 - h.min() + 1e-12
    assert np.abs(dist - np.abs(radii - 1)).mean() < 0.003


def test_point_to_plane_distance_of_a_plane_scan():
    grid = torch.stack(torch.meshgrid(torch.linspace(-1, 1, 5), torch.linspace(-1, 1, 5), indexing="ij"), -1)
    verts = torch.cat([grid.reshape(-1, 2), torch.zeros(25, 1)], dim=1).double()
    idx = torch.arange(25).reshape(5, 5)
    quads = torch.stack([idx[:-1, :-1], idx[1:, :-1], idx[1:, 1:], idx[:-1, 1:]], -1).reshape(-1, 4)
    faces = torch.cat([quads[:, [0, 1, 2]], quads[:, [0, 2, 3]]])
    scan = torch.tensor([[0.13, -0.4, 0.2], [0.7, 0.66, -0.05], [-0.31, 0.02, 0.0]], dtype=torch.float64)
    assert torch.allclose(scan_to_mesh_distance(scan, verts, faces, kind="plane"), scan[:, 2].abs(), atol=1e-12)
    assert torch.allclose(scan_to_mesh_distance(scan, verts, faces), scan[:, 2].abs(), atol=1e-12)
    with pytest.raises(ValueError, match="kind"):
        scan_to_mesh_distance(scan, verts, faces, kind="normal")


# ------------------------------------------------------------------------------------------------ ICP
def _moved_scan(n: int = 400) -> torch.Tensor:
    verts, faces, mesh = _blob()
    points, _ = trimesh.sample.sample_surface(mesh, n, seed=1)
    return torch.tensor(points @ ROTATION.T + SHIFT)


def test_icp_recovers_a_known_rigid_motion():
    """Point-to-plane ICP of a scan (surface samples, moved by a 7.5 degree rotation and a shift) onto the mesh."""
    verts, faces, _ = _blob()
    scan = _moved_scan()
    result = rigid_icp(scan, verts, faces)
    m = result.transform.matrix()[0].numpy()
    assert np.abs(m[:3, :3] - ROTATION.T).max() < 1e-8
    assert np.abs(m[:3, 3] + ROTATION.T @ SHIFT).max() < 1e-8
    assert result.converged and result.iterations <= 10 and result.rmse < 1e-8
    before = scan_to_mesh_distance(scan, verts, faces)
    assert torch.allclose(result.distances, scan_to_mesh_distance(result.aligned, verts, faces))
    assert float(before.mean()) > 1e4 * float(result.distances.mean())


def test_point_to_point_icp_to_a_point_set_with_and_without_scale():
    verts, _, _ = _blob()
    small = torch.tensor(Rotation.from_rotvec([0.01, -0.005, 0.008]).as_matrix())
    moved = verts @ small.T + torch.tensor([0.005, -0.003, 0.002])  # within half the vertex spacing (0.07)
    result = rigid_icp(moved, verts)  # no faces: nearest-vertex correspondences
    assert result.converged and result.rmse < 1e-10
    assert torch.allclose(result.transform.rotation[0], small.T, atol=1e-10)
    scaled = rigid_icp(1.1 * moved, verts, scale=True)
    assert scaled.rmse < 1e-10 and float(scaled.transform.scale[0]) == pytest.approx(1 / 1.1)


def test_similarity_icp_stops_before_a_degenerate_source_collapses():
    """A source (nearly) on one point, as an untrained network's mesh can be: Umeyama's scale is 0, not 0/0, and
    scaled ICP stops at its last finite transform (not converged) instead of feeding NaN to the k-d tree."""
    gen = torch.Generator().manual_seed(0)
    dst = 5 * torch.randn(200, 3, generator=gen, dtype=torch.float64)
    point = torch.zeros(10, 3, dtype=torch.float64)
    collapsed = rigid_align(point, dst[:10], scale=True)
    assert float(collapsed.scale[0]) == 0.0 and torch.isfinite(collapsed.translation).all()
    src = 1e-9 * torch.randn(50, 3, generator=gen, dtype=torch.float64)
    result = rigid_icp(src, dst, scale=True, max_iterations=40)
    assert not result.converged and torch.isfinite(result.aligned).all() and torch.isfinite(result.distances).all()
    assert float(result.transform.scale[0]) == 1.0  # the first step would have collapsed: the start is kept


def test_icp_from_a_landmark_guess():
    """Far from the answer, a few corresponding landmarks (rigid_align) start ICP where it converges."""
    verts, faces, _ = _blob()
    big = torch.tensor(Rotation.from_rotvec([0.5, 0.9, -0.4]).as_matrix())
    scan = _moved_scan() @ big.T
    ids = torch.tensor([0, 50, 100, 200, 400])
    landmarks = verts[ids] @ torch.tensor(ROTATION.T) @ big.T + torch.tensor(SHIFT) @ big.T
    guess = rigid_align(landmarks + 0.02, verts[ids])  # noisy landmarks
    assert rigid_icp(scan, verts, faces, initial=guess).rmse < 1e-8


def test_icp_checks_its_settings():
    verts, faces, _ = _blob()
    scan = _moved_scan(50)
    with pytest.raises(ValueError, match="scale"):
        rigid_icp(scan, verts, faces, scale=True)
    with pytest.raises(ValueError, match="max_distance"):
        rigid_icp(scan, verts, faces, max_distance=1e-9)
    with pytest.raises(ValueError, match="method"):
        rigid_icp(scan, verts, faces, method="normal")
