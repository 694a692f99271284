"""Closed-form pose: exact on noiseless correspondences, consistent between the weak and pinhole cameras."""

from __future__ import annotations

import math

import pytest
import torch

from facelab.fitting import matrix_to_axis_angle, perspective_from_weak, weak_perspective_procrustes
from facelab.render import PerspectiveCamera, WeakPerspectiveCamera, axis_angle_to_matrix


def _face_points(b: int, g: torch.Generator) -> torch.Tensor:
    """(B, 40, 3) non-planar point clouds the size of a face (decimetres)."""
    return torch.randn(b, 40, 3, generator=g, dtype=torch.float64) * torch.tensor([0.6, 0.8, 0.3], dtype=torch.float64)


def test_procrustes_recovers_a_weak_perspective_pose_exactly():
    g = torch.Generator().manual_seed(0)
    pts = _face_points(4, g)
    rot = axis_angle_to_matrix(torch.tensor([[0.2, -0.6, 0.1], [0.0, 0.0, 0.0], [-0.3, 0.4, -0.2], [0.1, 1.0, 0.3]],
                                            dtype=torch.float64))
    scale = torch.tensor([0.9, 1.3, 0.5, 2.0], dtype=torch.float64)
    trans = torch.tensor([[0.1, -0.2], [0.0, 0.3], [-0.4, 0.05], [0.2, 0.2]], dtype=torch.float64)
    cam = WeakPerspectiveCamera(scale=scale, translation=trans)
    ndc = cam.project(pts @ rot.transpose(1, 2))[..., :2]
    r, s, t = weak_perspective_procrustes(pts, ndc)
    torch.testing.assert_close(r, rot, atol=1e-7, rtol=0)
    torch.testing.assert_close(s, scale, atol=1e-7, rtol=0)
    torch.testing.assert_close(t, trans, atol=1e-7, rtol=0)
    torch.testing.assert_close(torch.linalg.det(r), torch.ones(4, dtype=torch.float64))


def test_procrustes_ignores_zero_weight_outliers():
    g = torch.Generator().manual_seed(1)
    pts = _face_points(1, g)
    rot = axis_angle_to_matrix(torch.tensor([[0.1, 0.3, 0.0]], dtype=torch.float64))
    ndc = 0.7 * (pts @ rot.transpose(1, 2))[..., :2]
    weights = torch.ones(1, 40, dtype=torch.float64)
    ndc[0, :5] += 3.0  # five gross outliers
    weights[0, :5] = 0.0
    r, s, _ = weak_perspective_procrustes(pts, ndc, weights)
    torch.testing.assert_close(r, rot, atol=1e-7, rtol=0)
    assert abs(float(s) - 0.7) < 1e-7
    r_bad, _, _ = weak_perspective_procrustes(pts, ndc)
    assert (r_bad - rot).abs().max() > 1e-2  # the outliers do move an unweighted fit


def test_procrustes_rejects_bad_shapes():
    with pytest.raises(ValueError, match="points"):
        weak_perspective_procrustes(torch.zeros(1, 5, 3), torch.zeros(1, 4, 2))


def test_perspective_pose_reproduces_the_weak_pose_at_the_centroid():
    g = torch.Generator().manual_seed(2)
    pts = _face_points(2, g)
    rot = axis_angle_to_matrix(torch.tensor([[0.1, 0.5, 0.0], [-0.2, -0.3, 0.1]], dtype=torch.float64))
    scale = torch.tensor([0.8, 1.1], dtype=torch.float64)
    trans = torch.tensor([[0.1, -0.1], [-0.2, 0.3]], dtype=torch.float64)
    focal = torch.full((2, 2), 900.0, dtype=torch.float64)
    pp = torch.tensor([[112.0, 112.0], [100.0, 130.0]], dtype=torch.float64)  # one off-centre principal point
    centroid = pts.mean(1)
    t = perspective_from_weak(rot, scale, trans, centroid, focal, pp, (224, 224))
    eye = torch.eye(3, dtype=torch.float64).expand(2, 3, 3)
    persp = PerspectiveCamera(focal=focal, principal_point=pp, image_size=(224, 224), rotation=eye, translation=t)
    weak = WeakPerspectiveCamera(scale=scale, translation=trans)
    posed_c = (centroid[:, None] @ rot.transpose(1, 2))
    torch.testing.assert_close(persp.project(posed_c)[..., :2], weak.project(posed_c)[..., :2], atol=1e-7, rtol=0)
    # apparent size: a small step at the centroid spans the same NDC distance in both cameras
    step = posed_c + torch.tensor([1e-4, 0.0, 0.0], dtype=torch.float64)
    d_persp = persp.project(step)[..., 0] - persp.project(posed_c)[..., 0]
    d_weak = weak.project(step)[..., 0] - weak.project(posed_c)[..., 0]
    torch.testing.assert_close(d_persp, d_weak, rtol=1e-3, atol=0)
    assert (t[:, 2] < 0).all()  # in front of the camera (looking along -z)


def test_matrix_to_axis_angle_round_trip():
    aa = torch.tensor([[0.3, -0.2, 0.1], [0.0, math.pi / 2, 0.0], [1e-5, 0.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(matrix_to_axis_angle(axis_angle_to_matrix(aa)), aa, atol=1e-6, rtol=0)
