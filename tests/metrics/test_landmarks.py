"""Landmark NME with each normalization, visibility, explicit eye indices, and the AFLW2000-3D yaw bins."""

from __future__ import annotations

import math

import pytest
import torch

from facelab.metrics import IBUG68_INTER_PUPIL, landmark_distances, landmark_nme, nme_normalizer, yaw_binned_mean


def _face68() -> torch.Tensor:
    """(1, 68, 2) landmarks in a 100 x 50 box, outer eye corners (36, 45) 60 apart, eye centres 40 apart."""
    pts = torch.zeros(1, 68, 2)
    pts[0, :, 0] = torch.linspace(0, 100, 68)
    pts[0, :, 1] = torch.linspace(0, 50, 68)
    pts[0, 36] = torch.tensor([20.0, 20.0])  # outer corner of the image-left eye
    pts[0, 45] = torch.tensor([80.0, 20.0])  # outer corner of the image-right eye
    pts[0, 37:42] = torch.tensor([30.0, 20.0])  # with 36: centroid x = (20 + 5 * 30) / 6
    pts[0, 42:45] = torch.tensor([70.0, 20.0])
    pts[0, 46:48] = torch.tensor([70.0, 20.0])  # with 45: centroid x = (80 + 5 * 70) / 6
    return pts


def test_unnormalized_nme_is_the_mean_distance_and_ignores_depth():
    target = torch.rand(2, 105, 2) * 2 - 1
    pred = torch.cat([target + torch.tensor([0.03, 0.04]), torch.zeros(2, 105, 1)], dim=-1)
    assert torch.allclose(landmark_nme(pred, target), torch.full((2,), 0.05), atol=1e-6)
    assert landmark_distances(pred, target).shape == (2, 105)


def test_each_normalization_hand_computed():
    target = _face68()
    pred = target + torch.tensor([3.0, 4.0])  # every point 5 off
    assert float(landmark_nme(pred, target, "bbox")) == pytest.approx(5 / math.sqrt(100 * 50))
    assert float(landmark_nme(pred, target, "inter_ocular")) == pytest.approx(5 / 60)
    pupil = (80 + 5 * 70) / 6 - (20 + 5 * 30) / 6
    assert float(landmark_nme(pred, target, "inter_pupil")) == pytest.approx(5 / pupil)
    assert float(landmark_nme(pred, target, torch.tensor([10.0]))) == pytest.approx(0.5)


def test_explicit_eye_indices_for_other_layouts():
    target = torch.zeros(1, 5, 2)
    target[0, 0], target[0, 1], target[0, 3], target[0, 4] = (torch.tensor(v) for v in
                                                              ([0.0, 0.0], [2.0, 0.0], [10.0, 0.0], [12.0, 0.0]))
    pred = target + torch.tensor([0.0, 1.0])
    # eye centres: mean of points 0, 1 (x = 1) and of 3, 4 (x = 11): 10 apart
    assert float(landmark_nme(pred, target, "inter_pupil", eye_indices=((0, 1), (3, 4)))) == pytest.approx(0.1)
    assert float(landmark_nme(pred, target, "inter_ocular", eye_indices=((0,), (4,)))) == pytest.approx(1 / 12)
    with pytest.raises(ValueError, match="eye_indices"):
        landmark_nme(pred, target, "inter_ocular")  # 5 points: no iBUG-68 default


def test_visibility_masks_points_and_the_box():
    target = _face68().repeat(2, 1, 1)
    pred = target.clone()
    pred[:, 0] += torch.tensor([30.0, 40.0])  # one point 50 off
    vis = torch.ones(2, 68, dtype=torch.bool)
    vis[1, 0] = False  # the second image does not see it
    nme = landmark_nme(pred, target, visibility=vis)
    assert float(nme[0]) == pytest.approx(50 / 68) and float(nme[1]) == pytest.approx(0.0)
    # the box of the visible points only: drop the corners (0, 0) and (100, 50)
    vis[:, 0] = vis[:, 67] = False
    box = nme_normalizer(target, "bbox", visibility=vis)
    lo, hi = target[0, 1:67].amin(0), target[0, 1:67].amax(0)
    assert torch.allclose(box, ((hi - lo).prod()).sqrt().expand(2))
    nothing = torch.zeros(2, 68, dtype=torch.bool)
    assert torch.isnan(landmark_nme(pred, target, visibility=nothing)).all()


def test_pupil_indices_are_the_eye_contours():
    assert IBUG68_INTER_PUPIL == (tuple(range(36, 42)), tuple(range(42, 48)))


def test_nme_checks_shapes_and_names():
    with pytest.raises(ValueError, match="same B and L"):
        landmark_nme(torch.zeros(2, 68, 2), torch.zeros(2, 67, 2))
    with pytest.raises(ValueError, match="normalization"):
        landmark_nme(torch.zeros(1, 68, 2), torch.zeros(1, 68, 2), "face")
    with pytest.raises(ValueError, match=r"\(B,\)"):
        landmark_nme(torch.zeros(2, 68, 2), torch.zeros(2, 68, 2), torch.ones(3))
    with pytest.raises(ValueError, match="3 coordinates"):
        landmark_nme(torch.zeros(1, 68, 2), torch.zeros(1, 68, 2), dims=3)


def test_yaw_binned_mean_of_aflw2000_bins():
    errors = torch.tensor([1.0, 3.0, 10.0, 20.0, 30.0, 99.0])
    yaw = torch.tensor([5.0, -25.0, 45.0, 90.0, -70.0, 95.0])  # the last lies outside [0, 90]
    r = yaw_binned_mean(errors, yaw)
    assert r.counts == (2, 1, 2)
    assert r.per_bin == pytest.approx((2.0, 10.0, 25.0))
    assert r.balanced_mean == pytest.approx((2 + 10 + 25) / 3)
    assert r.overall_mean == pytest.approx((1 + 3 + 10 + 20 + 30) / 5)
    empty = yaw_binned_mean(torch.tensor([1.0]), torch.tensor([10.0]))
    assert empty.counts == (1, 0, 0) and math.isnan(empty.per_bin[1]) and empty.balanced_mean == 1.0
