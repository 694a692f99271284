"""Landmark loss and mesh Laplacian smoothness against hand-computed values, trimesh and pytorch3d."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from facelab.losses import (
    LandmarkLoss,
    MeshLaplacianSmoothness,
    apply_laplacian,
    landmark_loss,
    laplacian_smoothness,
    mesh_laplacian,
)


def test_landmark_loss_norms_and_visibility():
    pred = torch.zeros(2, 2, 2, requires_grad=True)
    target = torch.tensor([[[3.0, 4.0], [0.0, 1.0]], [[1.0, 1.0], [2.0, 2.0]]])
    # l2: mean of squared coordinates = (9 + 16 + 0 + 1 + 1 + 1 + 4 + 4) / 8
    assert landmark_loss(pred, target).item() == pytest.approx(36 / 8)
    assert landmark_loss(pred, target, norm="l1").item() == pytest.approx(14 / 8)
    # euclidean: mean point distance (5 + 1 + sqrt2 + sqrt8) / 4
    assert landmark_loss(pred, target, norm="euclidean").item() == pytest.approx((6 + 2**0.5 + 8**0.5) / 4)
    # per-sample and per-landmark visibility
    assert landmark_loss(pred, target, visibility=torch.tensor([True, False])).item() == pytest.approx(26 / 4)
    vis = torch.tensor([[1.0, 0.0], [0.0, 0.5]])  # soft weight on the last point
    assert landmark_loss(pred, target, visibility=vis).item() == pytest.approx((25 + 0.5 * 8) / (2 * 1.5))
    # per-landmark weights
    weights = torch.tensor([2.0, 0.0])
    assert landmark_loss(pred, target, weights=weights, norm="l1").item() == pytest.approx((2 * 7 + 2 * 2) / (2 * 4))
    assert LandmarkLoss("l1", weights)(pred, target).item() == pytest.approx((2 * 7 + 2 * 2) / (2 * 4))
    # nothing visible: 0, still attached
    none = landmark_loss(pred, target, visibility=torch.zeros(2, dtype=torch.bool))
    assert none.item() == 0.0
    none.backward()
    assert pred.grad is not None and torch.isfinite(pred.grad).all()


def test_landmark_loss_rejects_bad_shapes():
    with pytest.raises(ValueError, match="same shape|one shape"):
        landmark_loss(torch.zeros(1, 3, 2), torch.zeros(1, 4, 2))
    with pytest.raises(ValueError, match=r"visibility \(3,\)"):
        landmark_loss(torch.zeros(2, 3, 2), torch.zeros(2, 3, 2), visibility=torch.ones(3))
    with pytest.raises(ValueError, match="norm"):
        landmark_loss(torch.zeros(1, 3, 2), torch.zeros(1, 3, 2), norm="l3")


def _grid_mesh(n: int = 4):
    """An n x n vertex grid in the z = 0 plane, jittered, two triangles per cell."""
    gen = torch.Generator().manual_seed(0)
    ys, xs = torch.meshgrid(torch.arange(n, dtype=torch.float64), torch.arange(n, dtype=torch.float64),
                            indexing="ij")
    verts = torch.stack([xs, ys, torch.zeros_like(xs)], -1).reshape(-1, 3)
    verts[:, :2] += 0.2 * torch.rand(verts.shape[0], 2, generator=gen, dtype=torch.float64)
    verts[:, 2] = 0.3 * torch.rand(verts.shape[0], generator=gen, dtype=torch.float64)
    faces = []
    for r in range(n - 1):
        for c in range(n - 1):
            a, b, d, e = r * n + c, r * n + c + 1, (r + 1) * n + c, (r + 1) * n + c + 1
            faces += [[a, b, e], [a, e, d]]
    return verts, torch.tensor(faces)


def test_uniform_laplacian_matches_trimesh():
    trimesh = pytest.importorskip("trimesh")
    from trimesh.smoothing import laplacian_calculation

    # a closed mesh: trimesh builds the adjacency from the faces' directed edges, which on a boundary miss one
    # direction
    mesh = trimesh.creation.icosphere(subdivisions=1)
    verts, faces = torch.from_numpy(mesh.vertices), torch.from_numpy(mesh.faces)
    average = laplacian_calculation(mesh, equal_weight=True).toarray()  # rows: neighbour means
    x = torch.randn(2, verts.shape[0], 3, dtype=torch.float64)
    expected = x.numpy() - np.einsum("ij,bjc->bic", average, x.numpy())
    ours = apply_laplacian(x, mesh_laplacian(faces, verts.shape[0]))
    np.testing.assert_allclose(ours.numpy(), expected, atol=1e-12)


def test_uniform_laplacian_by_hand_and_isolated_vertices():
    # a triangle 0-1-2 and a vertex 3 used by no face
    faces = torch.tensor([[0, 1, 2]])
    op = mesh_laplacian(faces, 4)
    x = torch.tensor([[[0.0], [3.0], [6.0], [100.0]]])
    # (L x)_0 = 0 - (3 + 6)/2, (L x)_1 = 3 - 3, (L x)_2 = 6 - 1.5; isolated vertex: 0
    torch.testing.assert_close(apply_laplacian(x, op), torch.tensor([[[-4.5], [0.0], [4.5], [0.0]]]))
    # smoothness: mean over the 3 connected vertices of the squared norm
    assert laplacian_smoothness(x, op).item() == pytest.approx((4.5**2 * 2) / 3)


@pytest.mark.pytorch3d
@pytest.mark.filterwarnings("ignore:Sparse invariant checks")
def test_cotangent_laplacian_matches_pytorch3d():
    p3d_ops = pytest.importorskip("pytorch3d.ops")
    verts, faces = _grid_mesh()
    L, _ = p3d_ops.cot_laplacian(verts.float(), faces)
    dense = L.to_dense().double()
    average = dense / dense.sum(1, keepdim=True)  # pytorch3d's "cot" normalisation
    x = torch.randn(1, verts.shape[0], 3, dtype=torch.float64)
    expected = x[0] - average @ x[0]
    ours = apply_laplacian(x, mesh_laplacian(faces, verts.shape[0], "cotangent", verts))
    torch.testing.assert_close(ours[0], expected, atol=1e-5, rtol=1e-5)


def test_cotangent_laplacian_right_triangle():
    # by hand: a right isosceles triangle, angles 90 (at 0), 45, 45: cot = 0, 1, 1
    tri = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    op = mesh_laplacian(torch.tensor([[0, 1, 2]]), 3, "cotangent", tri)
    w = {(int(i), int(j)): float(v) for i, j, v in zip(op.rows, op.cols, op.weights)}
    # vertex 0: edge 0-1 faces the 45-degree angle at 2 (cot 1), edge 0-2 the one at 1 (cot 1): 1/2 each
    # vertex 1: edge 1-0 (cot 1), edge 1-2 faces the right angle (cot 0): all weight on 0
    assert w[(0, 1)] == pytest.approx(0.5) and w[(0, 2)] == pytest.approx(0.5)
    assert w[(1, 0)] == pytest.approx(1.0) and w[(1, 2)] == pytest.approx(0.0, abs=1e-7)


def test_smoothness_module_gradients_and_errors():
    verts, faces = _grid_mesh(3)
    loss_fn = MeshLaplacianSmoothness(faces, verts.shape[0], "cotangent", verts).double()
    offsets = torch.randn(2, verts.shape[0], 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(loss_fn, (offsets,))
    # an affine field has zero uniform Laplacian at interior vertices only; a constant one everywhere
    assert loss_fn(torch.ones(1, verts.shape[0], 1, dtype=torch.float64)).item() == pytest.approx(0.0, abs=1e-20)
    with pytest.raises(ValueError, match="rest verts"):
        mesh_laplacian(faces, verts.shape[0], "cotangent")
    with pytest.raises(ValueError, match="outside"):
        mesh_laplacian(faces, 3)
    with pytest.raises(ValueError, match=r"\(B, V=9, C\)"):
        loss_fn(torch.zeros(1, 8, 3, dtype=torch.float64))
