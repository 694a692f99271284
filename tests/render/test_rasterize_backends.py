"""The torch (reference) and pytorch3d rasterizer backends agree, forward and backward."""

from __future__ import annotations

import pytest
import torch

from facelab.render import available_backends, interpolate, rasterize
from facelab.render.rasterize import PYTORCH3D_HINT, _backend


def test_registry_lists_torch_and_gives_an_install_hint(has_pytorch3d):
    assert "torch" in available_backends()
    assert ("pytorch3d" in available_backends()) == has_pytorch3d
    assert "pip install" in PYTORCH3D_HINT and "backend='torch'" in PYTORCH3D_HINT
    assert callable(_backend("torch"))


@pytest.mark.pytorch3d
@pytest.mark.parametrize("size", [(64, 64), (48, 80), (72, 40)])
@pytest.mark.parametrize("cull,perspective", [(False, False), (True, False), (False, True)])
def test_backends_agree_on_faces_barycentrics_and_depth(require_pytorch3d, make_sphere_scene, size, cull,
                                                        perspective):
    verts, faces = make_sphere_scene(batch=3, subdivisions=3, seed=sum(size))
    a = rasterize(verts, faces, size, cull_backfaces=cull, perspective_correct=perspective)
    b = rasterize(verts, faces, size, cull_backfaces=cull, perspective_correct=perspective, backend="pytorch3d")
    covered = a.mask | b.mask
    same = (a.pix_to_face == b.pix_to_face) & a.mask
    assert covered.sum() > 1000
    assert (a.pix_to_face == b.pix_to_face)[covered].float().mean() >= 0.995
    # pytorch3d computes barycentrics in float32 without renormalising, which on a few slivers at the
    # silhouette costs it ~1e-4; nearly every pixel agrees to 1e-4 and all to a few 1e-4.
    diff = (a.bary - b.bary).abs().amax(-1)[same]
    assert (diff <= 1e-4).float().mean() >= 0.995
    assert diff.max() <= 1e-3
    torch.testing.assert_close(a.zbuf[same], b.zbuf[same], atol=1e-3, rtol=1e-4)


@pytest.mark.pytorch3d
def test_backends_agree_on_gradients(require_pytorch3d, make_sphere_scene):
    verts, faces = make_sphere_scene(batch=2, subdivisions=3, seed=7)
    colors = torch.rand(2, verts.shape[1], 3, generator=torch.Generator().manual_seed(0))
    weights = torch.rand(2, 56, 64, 3, generator=torch.Generator().manual_seed(1))
    grads = []
    for backend in ("torch", "pytorch3d"):
        v = verts.clone().requires_grad_(True)
        frags = rasterize(v, faces, (56, 64), backend=backend)
        (interpolate(colors, frags) * weights).sum().backward()
        grads.append(v.grad)
    rel = (grads[0] - grads[1]).norm() / grads[1].norm()
    assert rel < 1e-3
