"""FaceDet3D's rendering network R: shapes of NTex_phi / Tex2Im, the two UV rasterizations (G_P = G_D without
details, G_D's shading changes with the detail map where the map has slopes), Eq. 13, the ablation switches."""

from __future__ import annotations

import pytest
import torch

from facedet3d.module_render import render_batch
from facedet3d.renderer import DetailRasterizer, RenderingNetwork, neural_render, sample_uv_raster
from facelab.data.albedo import UNITS_TO_METRES
from facelab.data.synthetic import SyntheticFaceDataset, SyntheticFaceSample
from facelab.uv import UVMapper

SIZE = 32


@pytest.fixture(scope="module")
def setup():
    data = SyntheticFaceDataset(family="bfm", num_samples=2, image_size=SIZE, uv_size=SIZE, displacement_size=64,
                                return_vertices=True, return_albedo=True, seed=3)
    batch = SyntheticFaceSample.collate(data.generate([0, 1]))
    m = data.model
    mapper = UVMapper(m.faces, m.uv, m.faces_uv, SIZE, num_verts=m.num_verts)
    raster = DetailRasterizer.from_model(m, image_size=SIZE, displacement_scale=1e-3 / UNITS_TO_METRES[m.units])
    return render_batch(batch, m, mapper), raster


def test_proxy_and_detailed_rasters(setup):
    rb, raster = setup
    proxy, flat, detailed = raster(rb.inputs), raster(rb.inputs, torch.zeros_like(rb.detail)), \
        raster(rb.inputs, rb.detail * 20)
    torch.testing.assert_close(flat.shading, proxy.shading)  # G_P = G_D with the details zeroed
    torch.testing.assert_close(detailed.grid, proxy.grid)  # bump-mapped G_D: same UV lookups ...
    assert (detailed.shading - proxy.shading).abs().amax() > 1e-3  # ... different shading
    ntm = torch.randn(2, 5, SIZE, SIZE)
    sampled = sample_uv_raster(ntm, proxy)
    assert sampled.shape == (2, 5, SIZE, SIZE) and (sampled * (1 - proxy.mask)).abs().max() == 0
    skin = raster.skin_mask(proxy)
    assert skin.shape == proxy.mask.shape and 0 < skin.sum() <= proxy.mask.sum()


@pytest.mark.parametrize("branches", ["double", "single", "ordinary"])
def test_render_shapes_and_eq13(setup, branches):
    rb, raster = setup
    torch.manual_seed(0)
    net = RenderingNetwork(features=4, ntex_channels=(4, 8), tex2im_channels=(4, 8), branches=branches)
    out = neural_render(net, raster, rb.inputs, rb.detail)
    assert out.image.shape == (2, 3, SIZE, SIZE) and torch.isfinite(out.image).all()
    assert (out.image * (1 - out.mask)).abs().max() == 0
    if branches == "double":
        torch.testing.assert_close(out.image, out.low_res + out.detail)  # Eq. 13
    elif branches == "ordinary":
        assert net.ntex is None and not list(net.parameters())
        torch.testing.assert_close(out.image, out.detailed.shaded_albedo)
    else:
        assert net.g_theta is None and out.low_res is None


def test_low_res_branch_cannot_see_the_details(setup):
    """g_theta reads G_P only: changing the detail map leaves I_LR unchanged (Eq. 11), I_D changes (Eq. 12)."""
    rb, raster = setup
    torch.manual_seed(0)
    net = RenderingNetwork(features=4, ntex_channels=(4, 8), tex2im_channels=(4, 8)).eval()
    a = neural_render(net, raster, rb.inputs, rb.detail)
    b = neural_render(net, raster, rb.inputs, rb.detail.roll(1, 0) * 20)
    torch.testing.assert_close(a.low_res, b.low_res)
    assert (a.detail - b.detail).abs().amax() > 0


def test_bad_branches_are_refused():
    with pytest.raises(ValueError, match="branches"):
        RenderingNetwork(branches="triple")
