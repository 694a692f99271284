"""Cameras, rotations and the screen conventions of facelab.render.camera."""

from __future__ import annotations

import math

import torch
from scipy.spatial.transform import Rotation

from facelab.render.camera import (
    PerspectiveCamera,
    WeakPerspectiveCamera,
    axis_angle_to_matrix,
    euler_to_matrix,
    ndc_to_pixels,
    pixel_centers_ndc,
    pixels_to_ndc,
)


def test_pixel_centres_and_round_trip_non_square():
    h, w = 2, 4
    centres = pixel_centers_ndc((h, w))
    assert centres.shape == (h, w, 2)
    # Top-left pixel centre: x = -1 + 1/W, y = +1 - 1/H (+y up, NDC spans the image edges on each axis).
    torch.testing.assert_close(centres[0, 0], torch.tensor([-1 + 1 / w, 1 - 1 / h]))
    torch.testing.assert_close(centres[-1, -1], torch.tensor([1 - 1 / w, -1 + 1 / h]))
    pix = ndc_to_pixels(centres, (h, w))
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    torch.testing.assert_close(pix, torch.stack([cols + 0.5, rows + 0.5], -1).float())
    torch.testing.assert_close(pixels_to_ndc(pix, (h, w)), centres)


def test_weak_perspective_matches_smirk_formula():
    cam = WeakPerspectiveCamera.from_params(torch.tensor([[7.0, 0.01, -0.02], [5.0, 0.0, 0.03]]))
    pts = torch.randn(2, 5, 3) * 0.1
    ndc = cam.project(pts)
    s, t = cam.scale[:, None], cam.translation[:, None]
    torch.testing.assert_close(ndc[..., 0], s * (pts[..., 0] + t[..., 0]))
    torch.testing.assert_close(ndc[..., 1], s * (pts[..., 1] + t[..., 1]))
    torch.testing.assert_close(ndc[..., 2], 10.0 - s * pts[..., 2])  # nearer to the viewer = smaller depth


def test_deep3d_camera_matches_deep3dfacerecon_projection():
    cam = PerspectiveCamera.deep3d(batch_size=1)
    pts = torch.tensor([[[0.3, -0.2, 0.5], [0.0, 0.0, 0.0]]])
    uv = cam.project_pixels(pts)
    depth = 10.0 - pts[..., 2]
    expected = torch.stack([112 + 1015 * pts[..., 0] / depth, 112 - 1015 * pts[..., 1] / depth], -1)
    torch.testing.assert_close(uv, expected)
    torch.testing.assert_close(cam.project(pts)[..., 2], depth)


def test_from_opencv_equals_k_r_t_projection():
    gen = torch.Generator().manual_seed(0)
    rot = torch.as_tensor(Rotation.random(2, random_state=1).as_matrix(), dtype=torch.float32)
    t = torch.tensor([[0.1, -0.2, 3.0], [0.0, 0.1, 4.0]])
    K = torch.tensor([[500.0, 0, 60], [0, 520.0, 45], [0, 0, 1]]).expand(2, 3, 3)
    pts = torch.randn(2, 6, 3, generator=gen) * 0.3
    cam_pts = pts @ rot.transpose(1, 2) + t[:, None]
    proj = cam_pts @ K.transpose(1, 2)
    expected = proj[..., :2] / proj[..., 2:]
    cam = PerspectiveCamera.from_opencv(K, rot, t, image_size=(90, 120))
    torch.testing.assert_close(cam.project_pixels(pts), expected, rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(cam.project(pts)[..., 2], cam_pts[..., 2])


def test_front_faces_are_counter_clockwise_in_ndc_for_both_cameras():
    tri = torch.tensor([[[0.0, 0.0, 0.0], [0.1, 0.0, 0.0], [0.0, 0.1, 0.0]]])  # CCW seen from +z (the viewer)
    for cam in (WeakPerspectiveCamera.from_params(torch.tensor([[5.0, 0.0, 0.0]])),
                PerspectiveCamera.deep3d(batch_size=1)):
        ndc = cam.project(tri)[0]
        e1, e2 = ndc[1] - ndc[0], ndc[2] - ndc[0]
        assert e1[0] * e2[1] - e1[1] * e2[0] > 0


def test_euler_is_rz_ry_rx_and_axis_angle_matches_scipy():
    angles = torch.tensor([[0.3, -0.4, 0.2], [0.0, 1.0, 0.0]], dtype=torch.float64)
    R = euler_to_matrix(angles)
    for a, r in zip(angles, R):
        expected = Rotation.from_euler("ZYX", [a[2].item(), a[1].item(), a[0].item()]).as_matrix()
        torch.testing.assert_close(r, torch.as_tensor(expected), atol=1e-6, rtol=0)
    aa = torch.tensor([[0.2, -0.5, 0.1], [0.0, 0.0, math.pi / 2]], dtype=torch.float64)
    expected = torch.as_tensor(Rotation.from_rotvec(aa.numpy()).as_matrix())
    torch.testing.assert_close(axis_angle_to_matrix(aa), expected, atol=1e-6, rtol=0)
    assert axis_angle_to_matrix(torch.zeros(4, 2, 3)).shape == (4, 2, 3, 3)
