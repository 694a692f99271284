"""ASM <-> vertices: positions rasterized into UV and read back at the vertices within tolerance."""

import pytest
import torch

from dualstream.asm import AsmCodec, AsmRange, shift_z_to_min_zero
from facelab.morphable import load_model


@pytest.fixture(scope="module")
def bfm():
    return load_model("bfm", "synthetic:tiny")


def _image_aligned(bfm, n=2, size=128):
    g = torch.Generator().manual_seed(0)
    params = bfm.random_params(n, generator=g)
    verts = bfm(params).verts  # (B, V, 3) decimetres, centred
    return verts * (size / 3.0) * torch.tensor([1.0, -1.0, 1.0]) + torch.tensor([size / 2, size / 2, 0.0])


def test_round_trip_within_tolerance(bfm):
    codec = AsmCodec.from_model(bfm, uv_size=128, image_size=128)
    verts = _image_aligned(bfm)
    asm = codec.from_vertices(verts)
    assert asm.shape == (2, 3, 128, 128)
    back = codec.to_vertices(asm)
    err = (back - verts).norm(dim=-1)
    extent = (verts.amax(1) - verts.amin(1)).norm(dim=-1).mean()
    assert err.mean() < 0.01 * extent, (err.mean(), extent)
    assert err.max() < 0.05 * extent


def test_round_trip_exact_for_an_affine_field(bfm):
    """A field linear in UV is rasterized and read back exactly where the bilinear footprint is on the charts
    (at chart borders the gutter holds neighbour averages: a fraction of a texel's change)."""
    codec = AsmCodec.from_model(bfm, uv_size=64, image_size=64)
    verts = torch.cat([bfm.uv * 50 + 3, bfm.uv[:, :1] * 7 + 1], dim=1)[None]
    back = codec.to_vertices(codec.from_vertices(verts))
    interior = codec.mapper.to_vertices(codec.mask)[0, :, 0] > 1 - 1e-6
    assert interior.sum() > 10
    assert (back - verts)[0, interior].abs().max() < 1e-3
    assert (back - verts).abs().max() < 50 / 64 * 1.5  # borders: within 1.5 texels of the field's change


def test_normalised_range_and_decode(bfm):
    codec = AsmCodec.from_model(bfm, uv_size=32, image_size=128, expression_gain=8.0)
    pos = torch.rand(1, 3, 32, 32) * 128
    offset = torch.randn(1, 3, 32, 32)
    a_id, a_exp = codec.encode(pos, pos + offset)
    keep = codec.mask > 0
    assert a_id.abs().max() <= 1 / 1.1 + 1e-6
    pid, full = codec.decode(a_id, a_exp)
    assert torch.allclose(pid[keep.expand_as(pid)], pos[keep.expand_as(pos)], atol=1e-4)
    assert torch.allclose((full - pid)[keep.expand_as(pid)], offset[keep.expand_as(pid)], atol=1e-4)
    assert AsmRange(128).denormalize_identity(torch.zeros(1)).item() == 64.0


def test_z_shift_and_wrong_size(bfm):
    codec = AsmCodec.from_model(bfm, uv_size=32, image_size=64)
    verts = _image_aligned(bfm, 1, 64)
    ident = codec.from_vertices(verts)
    full = codec.from_vertices(verts + torch.tensor([0.0, 0.0, 1.0]))
    i2, f2 = shift_z_to_min_zero(ident, full, codec.mask)
    z = i2[:, 2][codec.mask[:, 0] > 0]
    assert z.min().abs() < 1e-5
    assert torch.allclose((f2 - i2)[:, 2][codec.mask[:, 0] > 0], torch.ones_like(z))
    with pytest.raises(ValueError, match=r"\(B, 3, 32, 32\)"):
        codec.to_vertices(torch.zeros(1, 3, 16, 16))
