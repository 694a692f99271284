"""SMIRK masking (reference "Masking", supplementary §3.1): hull hole, render removal, mesh point sampling,
noisy paste, patch dropout, and the masker module."""

from __future__ import annotations

import math

import pytest
import torch

from facelab.morphable.base import faces_in_region
from smirk.masking import (
    DEFAULT_REGION_WEIGHTS,
    SmirkMasker,
    convex_hull_mask,
    face_hole_keep_mask,
    multiplicative_noise,
    patch_dropout_mask,
    random_barycentric,
    region_face_weights,
    sample_mesh_points,
)


@pytest.fixture(scope="module")
def face_weights(flame):
    return region_face_weights(flame.faces, flame.regions, DEFAULT_REGION_WEIGHTS)


def test_hull_of_a_square_is_the_square():
    corners = torch.tensor([[[10.0, 20.0], [30.0, 20.0], [30.0, 40.0], [10.0, 40.0], [20.0, 30.0]]])
    mask = convex_hull_mask(corners, (48, 48), margin=0.0)
    expected = torch.zeros(1, 1, 48, 48)
    expected[..., 20:40, 10:30] = 1  # pixel centres j + 0.5 in [10, 30]
    torch.testing.assert_close(mask, expected)


def test_hull_matches_the_exact_hull():
    from scipy.spatial import ConvexHull

    gen = torch.Generator().manual_seed(0)
    angle = torch.rand(1, 478, generator=gen) * 2 * math.pi
    radius = torch.rand(1, 478, generator=gen).sqrt()
    points = torch.stack([48 + 30 * radius * angle.cos(), 48 + 40 * radius * angle.sin()], dim=-1)
    mask = convex_hull_mask(points, (96, 96), margin=0.0)
    hull = points[0, torch.as_tensor(ConvexHull(points[0].numpy()).vertices)]  # counter-clockwise in (u, v)
    centres = torch.stack(torch.meshgrid(torch.arange(96) + 0.5, torch.arange(96) + 0.5, indexing="xy"), -1)
    edge = hull.roll(-1, 0) - hull
    rel = centres.reshape(-1, 1, 2) - hull
    exact = ((edge[:, 0] * rel[..., 1] - edge[:, 1] * rel[..., 0]) >= 0).all(1).reshape(1, 1, 96, 96).float()
    assert (mask >= exact).all()  # contains the exact hull
    grown = torch.nn.functional.max_pool2d(exact, 3, stride=1, padding=1)
    assert (mask <= grown).all()  # and reaches at most one pixel beyond it
    assert (mask - exact).sum() < 0.02 * exact.sum()


def test_hull_contains_the_landmarks(scene):
    mask = convex_hull_mask(scene.landmarks_px, (scene.size, scene.size))
    b = torch.arange(2)[:, None]
    cols, rows = scene.landmarks_px.floor().long().unbind(-1)
    assert (mask[b, 0, rows, cols] == 1).all()
    assert 0 < mask.mean() < 0.6


def test_hole_is_dilated_and_render_removed(scene):
    hull = torch.zeros(2, 1, scene.size, scene.size)
    hull[:, :, 30, 30] = 1
    keep = face_hole_keep_mask(hull, None, dilation=21)
    expected = torch.ones_like(hull)
    expected[..., 20:41, 20:41] = 0  # 10 px in every direction
    torch.testing.assert_close(keep, expected)
    keep = face_hole_keep_mask(hull, scene.render_mask, dilation=21)
    assert (keep * scene.render_mask).sum() == 0
    assert torch.equal(keep, expected * (1 - scene.render_mask))
    with pytest.raises(ValueError, match="odd"):
        face_hole_keep_mask(hull, None, dilation=20)


def test_region_weights(flame, face_weights):
    for name in ("neck", "left_eyeball", "right_eyeball", "left_ear", "right_ear"):
        assert face_weights[flame.region_faces(name)].max() == 0
    assert torch.allclose(face_weights[flame.region_faces("lips")], torch.tensor(0.5))
    assert face_weights[flame.region_faces("scalp")].max() == 0  # not listed
    assert (face_weights[flame.region_faces("forehead")] == 1).float().mean() > 0.5
    with pytest.raises(KeyError, match="cheeks"):
        region_face_weights(flame.faces, flame.regions, {"cheeks": 1.0})


def test_random_barycentric_is_uniform_on_the_triangle():
    bary = random_barycentric((20000,), torch.Generator().manual_seed(0))
    assert (bary >= 0).all() and torch.allclose(bary.sum(-1), torch.ones(20000))
    torch.testing.assert_close(bary.mean(0), torch.full((3,), 1 / 3), atol=0.01, rtol=0)


def test_sampling_budget_and_regions(flame, scene, face_weights):
    n = int(0.01 * 224 * 224)
    assert n == 501
    points = sample_mesh_points(scene.verts_px, flame.faces, face_weights, n, torch.Generator().manual_seed(0))
    assert points.face_idx.shape == (2, n) and points.bary.shape == (2, n, 3)
    assert (face_weights[points.face_idx] > 0).all()
    excluded = torch.cat([flame.region_faces(r) for r in ("neck", "left_eyeball", "right_eyeball", "scalp")])
    assert not torch.isin(points.face_idx, excluded).any()
    # front-facing: clockwise in pixels (counter-clockwise in NDC)
    tri = scene.verts_px[torch.arange(2)[:, None, None], flame.faces[points.face_idx]]  # (B, N, 3, 2)
    e1, e2 = tri[:, :, 1] - tri[:, :, 0], tri[:, :, 2] - tri[:, :, 0]
    assert (e1[..., 0] * e2[..., 1] - e1[..., 1] * e2[..., 0] < 0).all()
    # the sampled pixels lie inside the rendered face (up to its rim)
    torch.testing.assert_close(points.pix, points.pixels(scene.verts_px, flame.faces))
    pix = points.pix.floor().long()
    on_face = scene.render_mask[torch.arange(2)[:, None], 0, pix[..., 1], pix[..., 0]]
    assert on_face.mean() > 0.95


def test_sampling_is_reproducible(flame, scene, face_weights):
    a = sample_mesh_points(scene.verts_px, flame.faces, face_weights, 50, torch.Generator().manual_seed(3))
    b = sample_mesh_points(scene.verts_px, flame.faces, face_weights, 50, torch.Generator().manual_seed(3))
    assert torch.equal(a.face_idx, b.face_idx) and torch.equal(a.bary, b.bary)


def test_multiplicative_noise_statistics():
    image = torch.full((1, 3, 128, 128), 0.5)
    ratio = multiplicative_noise(image, 0.05, torch.Generator().manual_seed(0)) / 0.5
    assert abs(ratio.mean().item() - 1.0) < 2e-3
    assert abs(ratio.std().item() - 0.05) < 2e-3


@pytest.mark.parametrize("p", [0.01, 0.005])
def test_patch_dropout_rate(p):
    keep = patch_dropout_mask((4, 1, 96, 96), p, 11, torch.Generator().manual_seed(0))
    inner = keep[..., 5:-5, 5:-5]
    expected = 1 - (1 - p) ** 121  # dropped when any of the 11x11 neighbours is a centre
    assert abs((1 - inner.mean()).item() - expected) < 0.25 * expected
    assert torch.equal(patch_dropout_mask((1, 1, 8, 8), 0.0), torch.ones(1, 1, 8, 8))


def test_masker(flame, scene):
    masker = SmirkMasker(point_ratio=0.05)
    masker.set_topology(flame.faces, flame.regions)
    image = torch.rand(2, 3, scene.size, scene.size, generator=torch.Generator().manual_seed(0)) * 0.5 + 0.25
    out = masker(image, scene.landmarks_px, scene.render_mask, scene.verts_px, flame.faces,
                 generator=torch.Generator().manual_seed(1))
    n = masker.n_points((scene.size, scene.size))
    assert n == math.floor(0.05 * scene.size**2) and out.points.face_idx.shape == (2, n)
    hole = (out.mask == 0).float()
    hull = convex_hull_mask(scene.landmarks_px, (scene.size, scene.size))
    assert (hole >= hull * (1 - out.point_mask)).all()  # the hull is hidden except for pasted points
    assert ((out.mask == 0) | (out.point_mask == 1) | (scene.render_mask == 0)).all()  # render removed
    assert (out.masked_image * hole).abs().sum() == 0
    assert 0 < out.point_mask.sum() <= 2 * n
    # pasted pixels are the image's own pixels times N(1, 0.05) noise
    ratio = (out.masked_image / image)[out.point_mask.expand_as(image) == 1]
    assert ratio.std() < 0.1 and abs(ratio.mean() - 1) < 0.02
    # outside the hole the image is untouched
    keep = (out.mask == 1) & (out.point_mask == 0)
    assert torch.equal(out.masked_image[keep.expand_as(image)], image[keep.expand_as(image)])


def test_masker_needs_topology(scene):
    with pytest.raises(RuntimeError, match="set_topology"):
        SmirkMasker()(torch.rand(2, 3, scene.size, scene.size), scene.landmarks_px, None, scene.verts_px,
                      scene.faces)


def test_faces_in_region_helper_agrees(flame, face_weights):
    # every face with positive weight lies in one of the positively weighted regions
    positive = torch.cat([faces_in_region(flame.faces, flame.regions[r])
                          for r, w in DEFAULT_REGION_WEIGHTS.items() if w > 0])
    assert torch.isin(torch.nonzero(face_weights > 0).squeeze(1), positive).all()


def test_sampling_restricted_to_allowed_faces(flame, scene, face_weights):
    allowed = flame.region_faces("nose")
    points = sample_mesh_points(scene.verts_px, flame.faces, face_weights, 200, torch.Generator().manual_seed(0),
                                allowed_faces=allowed)
    assert torch.isin(points.face_idx, allowed).all()
    masker = SmirkMasker()
    masker.set_topology(flame.faces, flame.regions, allowed_faces=flame.region_faces("face"))
    outside = torch.ones(flame.num_faces, dtype=torch.bool)
    outside[flame.region_faces("face")] = False
    assert masker.face_weights[outside].max() == 0 and masker.face_weights.max() == 1


@pytest.mark.parametrize("size", [1, 3, 11, 21])
def test_separable_max_filter_equals_max_pool(size):
    from smirk.masking import _max_filter

    g = torch.Generator().manual_seed(size)
    for x in (torch.rand(2, 1, 37, 29, generator=g), (torch.rand(2, 1, 37, 29, generator=g) > 0.9).float()):
        expected = torch.nn.functional.max_pool2d(x, size, stride=1, padding=size // 2)
        assert torch.equal(_max_filter(x, size), expected)


def test_masker_eval_mode_pastes_guidance_pixels_without_noise_or_dropout(flame, scene):
    masker = SmirkMasker(point_ratio=0.05, patch_drop_p=0.5).eval()
    masker.set_topology(flame.faces, flame.regions)
    image = torch.rand(2, 3, scene.size, scene.size, generator=torch.Generator().manual_seed(3))
    out = masker(image, scene.landmarks_px, scene.render_mask, scene.verts_px, flame.faces,
                 generator=torch.Generator().manual_seed(0))
    assert out.point_mask.sum() > 0  # p=0.5 dropout in training would remove nearly all of them
    pasted = out.point_mask.expand_as(image) > 0
    torch.testing.assert_close(out.masked_image[pasted], image[pasted])  # no multiplicative noise
