"""The torch rasterizer: golden images, analytic coverage, the tie rule, edge cases, interpolation, gradients.

Goldens live in tests/render/golden/raster_scenes.npz; regenerate them (after checking a change is intended,
e.g. against the pytorch3d backend) with ``FACELAB_REGEN_GOLDEN=1 pytest tests/render/test_rasterize.py``.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from facelab.render import Fragments, MeshRasterizer, interpolate, interpolate_packed, pixels_to_ndc, rasterize
from facelab.render.camera import PerspectiveCamera, WeakPerspectiveCamera, pixel_centers_ndc
from facelab.render.rasterize_torch import visible_faces

GOLDEN = Path(__file__).parent / "golden" / "raster_scenes.npz"


def _ndc_from_pixels(points_pix, size, depth=1.0) -> torch.Tensor:
    """(N, 2) pixel coordinates (u, v) -> (1, N, 3) NDC vertices at a constant depth."""
    xy = pixels_to_ndc(torch.as_tensor(points_pix, dtype=torch.float64), size)
    return torch.cat([xy, torch.full_like(xy[:, :1], depth)], dim=1)[None]


def _cube():
    v = torch.tensor([[x, y, z] for x in (-1.0, 1.0) for y in (-1.0, 1.0) for z in (-1.0, 1.0)])
    f = torch.tensor([[0, 1, 3], [0, 3, 2], [4, 6, 7], [4, 7, 5], [0, 4, 5], [0, 5, 1],
                      [2, 3, 7], [2, 7, 6], [0, 2, 6], [0, 6, 4], [1, 5, 7], [1, 7, 3]])
    return v, f


def golden_scenes() -> dict[str, tuple[torch.Tensor, torch.Tensor, tuple[int, int]]]:
    """name -> (verts_ndc (1, V, 3), faces, (H, W)): a quad, two interpenetrating triangles, a rotated cube."""
    quad = torch.tensor([[[-0.62, -0.51, 2.0], [0.71, -0.47, 2.0], [0.66, 0.58, 2.0], [-0.58, 0.49, 2.0]]])
    quad_faces = torch.tensor([[0, 1, 2], [0, 2, 3]])
    # Two triangles crossing in depth: the z-test splits them along their intersection line.
    cross = torch.tensor([[[-0.9, -0.8, 1.0], [0.9, -0.7, 3.0], [0.0, 0.9, 2.0],
                           [-0.8, 0.7, 3.0], [0.85, 0.8, 1.0], [0.1, -0.9, 2.0]]])
    cross_faces = torch.tensor([[0, 1, 2], [3, 4, 5]])
    v, f = _cube()
    rot = torch.as_tensor(np.array([[0.86, -0.28, 0.43], [0.43, 0.86, -0.28], [-0.28, 0.43, 0.86]]),
                          dtype=torch.float32)
    rot = torch.linalg.qr(rot).Q  # orthonormal
    cam = WeakPerspectiveCamera.from_params(torch.tensor([[0.45, 0.1, -0.05]]))
    cube = cam.project((v @ rot.T)[None])
    return {"quad": (quad, quad_faces, (32, 32)), "cross": (cross, cross_faces, (32, 32)),
            "cube": (cube, f, (24, 40))}


def test_golden_images():
    results = {}
    for name, (verts, faces, size) in golden_scenes().items():
        frags = rasterize(verts, faces, size)
        results[f"{name}_pix_to_face"] = frags.pix_to_face[0].numpy().astype(np.int16)
        results[f"{name}_bary"] = frags.bary[0].numpy().astype(np.float32)
    if os.environ.get("FACELAB_REGEN_GOLDEN") == "1" or not GOLDEN.exists():
        if os.environ.get("FACELAB_REGEN_GOLDEN") != "1":
            pytest.fail(f"{GOLDEN} is missing; regenerate with FACELAB_REGEN_GOLDEN=1")
        GOLDEN.parent.mkdir(exist_ok=True)
        np.savez_compressed(GOLDEN, **results)
    golden = np.load(GOLDEN)
    for name in golden_scenes():
        expected, got = golden[f"{name}_pix_to_face"], results[f"{name}_pix_to_face"]
        assert (expected >= 0).sum() > 50, name
        assert (expected != got).mean() <= 0.005, name  # a pixel or two of float jitter at most
        same = expected == got
        np.testing.assert_allclose(results[f"{name}_bary"][same], golden[f"{name}_bary"][same], atol=1e-5)


def test_golden_cube_shows_three_faces_pairs():
    verts, faces, size = golden_scenes()["cube"]
    p2f = rasterize(verts, faces, size, cull_backfaces=True).pix_to_face
    visible = set(p2f[p2f >= 0].tolist())
    assert len({f // 2 for f in visible}) == 3  # a generic view of a cube shows three of its sides


def test_axis_aligned_rectangle_matches_analytic_coverage():
    size = (20, 28)
    x0, x1, y0, y1 = 3.3, 21.7, 4.2, 15.9  # pixel coordinates, no pixel centre on an edge
    verts = _ndc_from_pixels([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], size)
    faces = torch.tensor([[0, 3, 2], [0, 2, 1]])  # counter-clockwise in NDC (+y up)
    mask = rasterize(verts, faces, size).mask[0]
    rows, cols = torch.meshgrid(torch.arange(size[0]) + 0.5, torch.arange(size[1]) + 0.5, indexing="ij")
    expected = (cols > x0) & (cols < x1) & (rows > y0) & (rows < y1)
    assert torch.equal(mask, expected)


def test_top_left_rule_tiles_pixel_aligned_squares_exactly():
    """Edges through pixel centres: left/top edges own them, right/bottom do not, so abutting squares tile."""
    size = (12, 12)
    owned = torch.zeros(size, dtype=torch.int64)
    for ox, oy in [(2.5, 2.5), (6.5, 2.5), (2.5, 6.5), (6.5, 6.5)]:
        corners = [[ox, oy], [ox + 4, oy], [ox + 4, oy + 4], [ox, oy + 4]]
        for faces in (torch.tensor([[0, 3, 2], [0, 2, 1]]), torch.tensor([[1, 0, 3], [1, 3, 2]])):
            mask = rasterize(_ndc_from_pixels(corners, size), faces, size).mask[0]
            cols = torch.arange(size[1]) + 0.5
            expected = ((cols >= ox) & (cols < ox + 4))[None] & ((cols >= oy) & (cols < oy + 4))[:, None]
            assert torch.equal(mask, expected)
        owned += mask.long()
    assert owned.max() == 1 and owned.sum() == 64


def test_shared_edges_through_pixel_centres_are_watertight():
    """A fan whose vertices and edges hit pixel centres: every pixel is owned by at most one triangle, and every
    pixel centre strictly inside the polygon is covered (no cracks)."""
    size = (17, 17)
    c = 8.5
    ring = [(c + 6 * math.cos(a), c + 6 * math.sin(a)) for a in np.linspace(0, 2 * math.pi, 9)[:-1]]
    pts = [(c, c)] + [(round(x - 0.5) + 0.5, round(y - 0.5) + 0.5) for x, y in ring]  # on pixel centres
    verts = _ndc_from_pixels(pts, size)
    n = len(pts) - 1
    faces = torch.tensor([[0, 1 + (i + 1) % n, 1 + i] for i in range(n)])  # CCW in NDC
    count = torch.zeros(size, dtype=torch.int64)
    for f in faces:
        count += rasterize(verts, f[None], size).mask[0].long()
    full = rasterize(verts, faces, size)
    assert count.max() == 1
    assert torch.equal(full.mask[0], count == 1)
    # Pixels whose centre is inside the (convex) polygon by a margin must be covered.
    ring_pts = torch.tensor(pts[1:], dtype=torch.float64)
    edge = ring_pts.roll(-1, 0) - ring_pts
    rows, cols = torch.meshgrid(torch.arange(size[0]) + 0.5, torch.arange(size[1]) + 0.5, indexing="ij")
    p = torch.stack([cols, rows], -1).double()[..., None, :] - ring_pts  # (H, W, n, 2)
    side = edge[:, 0] * p[..., 1] - edge[:, 1] * p[..., 0]  # > 0 inside (the ring turns clockwise on screen)
    inner = (side / edge.norm(dim=1) > 0.1).all(-1)
    assert inner.sum() > 50
    assert full.mask[0][inner].all()


def test_depth_test_keeps_the_nearest_face_whatever_the_order():
    size = (16, 16)
    near = [[-0.8, -0.8, 1.0], [0.8, -0.8, 1.0], [0.0, 0.8, 1.0]]
    far = [[-0.9, -0.9, 2.0], [0.9, -0.9, 2.0], [0.0, 0.9, 2.0]]
    verts = torch.tensor([near + far])
    for faces, near_id in ((torch.tensor([[0, 1, 2], [3, 4, 5]]), 0), (torch.tensor([[3, 4, 5], [0, 1, 2]]), 1)):
        frags = rasterize(verts, faces, size)
        inner = rasterize(verts, faces[near_id:near_id + 1], size).mask
        assert (frags.pix_to_face[inner] == near_id).all()
        torch.testing.assert_close(frags.zbuf[inner], torch.ones(int(inner.sum())))


def test_edge_cases_degenerate_offscreen_behind_nonfinite_empty():
    size = (8, 10)
    verts = torch.tensor([[[-0.5, -0.5, 1.0], [0.5, -0.5, 1.0], [0.0, 0.5, 1.0],  # 0: fine
                           [-0.5, -0.5, 1.0], [0.0, 0.0, 1.0], [0.5, 0.5, 1.0],  # 1: collinear
                           [3.0, 3.0, 1.0], [4.0, 3.0, 1.0], [3.0, 4.0, 1.0],  # 2: off-screen
                           [-0.5, -0.5, -1.0], [0.5, -0.5, 1.0], [0.0, 0.5, 1.0],  # 3: corner behind camera
                           [-0.5, -0.5, 1.0], [math.nan, -0.5, 1.0], [0.0, 0.5, 1.0],  # 4: NaN
                           [-1e30, -1.0, 1.0], [1e30, -1.0, 1.0], [0.0, 1e30, 1.0]]])  # 5: huge
    faces = torch.arange(18).view(6, 3)
    for backend_faces in (faces[1:5], torch.zeros(0, 3, dtype=torch.long)):
        frags = rasterize(verts, backend_faces, size)
        assert (frags.pix_to_face == -1).all() and (frags.zbuf == -1).all() and (frags.bary == 0).all()
    p2f = rasterize(verts, faces, size).pix_to_face
    assert set(p2f.unique().tolist()) <= {-1, 0, 5}
    assert (p2f == 0).any()
    # A mesh entirely behind the camera renders nothing; z_near moves the cut.
    assert not rasterize(verts[:, :3] - torch.tensor([0, 0, 2.0]), faces[:1], size).mask.any()
    assert rasterize(verts[:, :3] - torch.tensor([0, 0, 2.0]), faces[:1], size, z_near=-5.0).mask.any()


def test_backface_culling_uses_ndc_winding():
    size = (8, 8)
    ccw = torch.tensor([[[-0.8, -0.8, 1.0], [0.8, -0.8, 1.0], [0.0, 0.8, 1.0]]])
    cw_faces, ccw_faces = torch.tensor([[0, 2, 1]]), torch.tensor([[0, 1, 2]])
    assert rasterize(ccw, ccw_faces, size, cull_backfaces=True).mask.any()
    assert not rasterize(ccw, cw_faces, size, cull_backfaces=True).mask.any()
    assert torch.equal(rasterize(ccw, cw_faces, size).mask, rasterize(ccw, ccw_faces, size).mask)


def test_large_triangles_banding_chunking_and_strategies_agree(make_sphere_scene):
    verts, faces = make_sphere_scene(batch=2, subdivisions=2)
    big = torch.tensor([[[-3.0, -3.0, 9.0], [3.0, -3.0, 9.0], [0.0, 4.0, 9.5]]]).expand(2, -1, -1)
    verts = torch.cat([verts, big], dim=1)
    n = verts.shape[1]
    faces = torch.cat([faces, torch.tensor([[n - 3, n - 2, n - 1]])])
    size = (150, 130)
    reference = visible_faces(verts, faces, size)
    assert (reference == faces.shape[0] - 1).float().mean() > 0.3  # the background triangle spans the image
    for strategy in ("grouped", "flat"):  # the CPU and the CUDA default: bit-identical by construction
        for max_candidates in (1, 97, 5000, 1 << 21):
            out = visible_faces(verts, faces, size, max_candidates=max_candidates, strategy=strategy)
            assert torch.equal(out, reference)
        for kwargs in ({"perspective_correct": True}, {"cull_backfaces": True}, {"z_near": -100.0}):
            assert torch.equal(visible_faces(verts, faces, size, strategy=strategy, **kwargs),
                               visible_faces(verts, faces, size, strategy="grouped", **kwargs))


def test_interpolation_reproduces_linear_functions_and_corner_layout(make_sphere_scene):
    verts, faces = make_sphere_scene(batch=2, subdivisions=2)
    size = (30, 26)
    frags = rasterize(verts, faces, size)
    attrs = torch.stack([2 * verts[..., 0] - verts[..., 1], verts[..., 2]], dim=-1)  # linear in NDC x, y, depth
    img = interpolate(attrs, frags)
    assert img.shape == (2, *size, 2)
    xy = pixel_centers_ndc(size)
    m = frags.mask
    expected = (2 * xy[..., 0] - xy[..., 1]).expand(2, -1, -1)
    torch.testing.assert_close(img[..., 0][m], expected[m], atol=1e-5, rtol=0)
    torch.testing.assert_close(img[..., 1][m], frags.zbuf[m], atol=1e-5, rtol=0)
    assert (img[~m] == 0).all()
    # Per-corner (F, 3, C) and batched (B, F, 3, C) layouts give the same result as per-vertex.
    corner = attrs[:, faces]  # (B, F, 3, C)
    torch.testing.assert_close(interpolate(corner, frags), img)
    torch.testing.assert_close(interpolate(attrs[0][faces], frags)[0], img[0])
    torch.testing.assert_close(interpolate(attrs[0], frags)[0], img[0])
    torch.testing.assert_close(interpolate_packed(attrs, frags), img.reshape(-1, 2)[frags.pix_idx])


def test_interpolate_rejects_ambiguous_and_wrong_shapes():
    verts = torch.tensor([[[-0.8, -0.8, 1.0], [0.8, -0.8, 1.0], [0.0, 0.8, 1.0]]])
    faces = torch.tensor([[0, 1, 2]])
    frags = rasterize(verts, faces, 8)
    with pytest.raises(ValueError, match="per_corner"):
        interpolate(torch.ones(1, 3, 2), frags)  # (B=1, V=3, C) and (F=1, 3, C) at once
    torch.testing.assert_close(interpolate(torch.ones(1, 3, 2), frags, per_corner=False)[frags.mask],
                               torch.ones(int(frags.mask.sum()), 2))
    with pytest.raises(ValueError):
        interpolate(torch.ones(5, 2), frags)


def test_perspective_correct_barycentrics_and_depth():
    """A tilted plane under a pinhole camera: perspective-correct interpolation of world x equals the ray hit."""
    size = (24, 24)
    cam = PerspectiveCamera.deep3d(batch_size=1, image_size=24, focal=1015.0, distance=10.0)
    plane = torch.tensor([[[-1.5, -1.5, -1.0], [1.5, -1.5, 1.0], [1.5, 1.5, 1.0], [-1.5, 1.5, -1.0]]])
    faces = torch.tensor([[0, 1, 2], [0, 2, 3]])
    ndc = cam.project(plane)
    frags = rasterize(ndc, faces, size, perspective_correct=True)
    m = frags.mask[0]
    assert m.float().mean() > 0.5
    world_x = interpolate(plane[..., :1], frags)[0, ..., 0]
    # The ray through a pixel centre: x = (u - cx) d / f, the plane: z = x * 2/3, depth d = 10 - z.
    f = 1015.0 * 24 / 224
    u = torch.arange(24, dtype=torch.float32) + 0.5 - 12
    k = u / f  # x = k d, d = 10 - 2/3 x  ->  x = 10 k / (1 + 2k/3)
    x_true = (10 * k / (1 + 2 * k / 3)).expand(24, -1)
    torch.testing.assert_close(world_x[m], x_true[m], atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(frags.zbuf[0][m], (10 - 2 / 3 * x_true)[m], atol=2e-5, rtol=1e-5)
    screen = rasterize(ndc, faces, size, perspective_correct=False)
    assert (interpolate(plane[..., :1], screen)[0, ..., 0][m] - x_true[m]).abs().max() > 1e-3


@pytest.mark.parametrize("perspective_correct", [False, True])
def test_gradients_wrt_vertices_match_finite_differences(perspective_correct):
    """d(loss)/d(verts_ndc) through the barycentric coordinates, against central differences (float64)."""
    gen = torch.Generator().manual_seed(3)
    ring = torch.linspace(0, 2 * math.pi, 6)[:-1]
    xy = torch.stack([torch.cos(ring), torch.sin(ring)], 1) * 0.8 + torch.rand(5, 2, generator=gen) * 0.1
    verts = torch.cat([torch.cat([torch.zeros(1, 2), xy]), 2 + torch.rand(6, 1, generator=gen)], 1)[None]
    verts = verts.double().requires_grad_(True)
    faces = torch.tensor([[0, i, i % 5 + 1] for i in range(1, 6)])
    colors = torch.rand(1, 6, 3, generator=gen, dtype=torch.float64)
    weights = torch.rand(1, 20, 20, 3, generator=gen, dtype=torch.float64)

    def loss(v):
        frags = rasterize(v, faces, 20, perspective_correct=perspective_correct)
        return (interpolate(colors, frags) * weights).sum() + (frags.zbuf * frags.mask).sum() * 0.1

    grad, = torch.autograd.grad(loss(verts), verts)
    assert grad.abs().sum() > 0
    numeric = torch.zeros_like(grad)
    eps = 1e-6
    with torch.no_grad():
        for i in range(verts.shape[1]):
            for k in range(3):
                d = torch.zeros_like(verts)
                d[0, i, k] = eps
                numeric[0, i, k] = (loss(verts + d) - loss(verts - d)) / (2 * eps)
    torch.testing.assert_close(grad, numeric, atol=1e-5, rtol=1e-4)


def test_gradcheck_wrt_attributes():
    verts = torch.tensor([[[-0.8, -0.7, 1.0], [0.9, -0.6, 1.5], [0.1, 0.8, 2.0]]], dtype=torch.float64)
    frags = rasterize(verts, torch.tensor([[0, 1, 2]]), (6, 5))
    attrs = torch.rand(1, 3, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a: interpolate(a, frags, per_corner=False), (attrs,))


def test_module_and_fragments_api():
    raster = MeshRasterizer(image_size=(6, 9), cull_backfaces=True)
    verts = torch.tensor([[[-0.8, -0.8, 1.0], [0.8, -0.8, 1.0], [0.0, 0.8, 1.0]]])
    frags = raster(verts, torch.tensor([[0, 1, 2]]))
    assert isinstance(frags, Fragments)
    assert frags.pix_to_face.shape == (1, 6, 9) and frags.bary.shape == (1, 6, 9, 3) and frags.zbuf.shape == (1, 6, 9)
    torch.testing.assert_close(frags.bary.sum(-1)[frags.mask], torch.ones(int(frags.mask.sum())))
    assert (frags.bary >= -1e-6).all()
    with pytest.raises(ValueError):
        rasterize(verts[0], torch.tensor([[0, 1, 2]]), 8)
    with pytest.raises(ValueError, match="unknown rasterizer backend"):
        rasterize(verts, torch.tensor([[0, 1, 2]]), 8, backend="nope")
