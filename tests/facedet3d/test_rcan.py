"""facedet3d.rcan: RCAN shapes (Eq. 8), tiled inference (Eq. 9) equal to untiled, and the memory bound."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from facedet3d.rcan import RCAN, ChannelAttention, rcan_twice, tiled_peak_bytes, upscale_tiled


def tiny_rcan() -> RCAN:
    torch.manual_seed(0)
    return RCAN(features=8, n_groups=2, n_blocks=2, reduction=4).eval()


def test_rcan_shapes_and_channel_attention():
    net = tiny_rcan()
    assert net(torch.randn(2, 1, 12, 10)).shape == (2, 1, 48, 40)
    ca = ChannelAttention(16, reduction=16)
    x = torch.randn(2, 16, 5, 5)
    gate = ca(x) / x
    assert torch.allclose(gate, gate[..., :1, :1].expand_as(gate), atol=1e-5)  # one gate per channel
    assert ((gate > 0) & (gate < 1)).all()
    with pytest.raises(ValueError, match="power of two"):
        RCAN(scale=3)
    default = RCAN()
    assert len(default.body) == 11 and len(default.body[0].body) == 21  # 10 groups x 20 RCABs (+ convs)


class _LocalSR(nn.Module):
    """A purely local x2 network (receptive field 5 input texels): tiled must equal untiled exactly."""

    scale = 2

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 3, padding=1),
                                 nn.PixelShuffle(2))

    def forward(self, x):
        return self.net(x)


def test_tiling_is_exact_for_a_local_network():
    net = _LocalSR().eval()
    x = torch.randn(2, 1, 37, 29)
    with torch.no_grad():
        full = net(x)
    for tile, overlap in ((16, 8), (12, 8), (20, 10), (64, 8)):
        # receptive-field radius 2 <= overlap / 4: the texels that saw a tile's zero padding get no weight
        torch.testing.assert_close(upscale_tiled(net, x, tile, overlap), full, atol=1e-5, rtol=1e-5)
    seams = upscale_tiled(net, x, 16, 2)  # too little overlap: the padding shows
    assert (seams - full).abs().max() > 1e-3


def test_tiled_rcan_matches_untiled_within_tolerance():
    net = tiny_rcan()
    x = torch.randn(1, 1, 48, 48) * 0.5
    with torch.no_grad():
        full = net(x)
    tiled = upscale_tiled(net, x, tile=32, overlap=16)
    err = (tiled - full).abs()
    assert err.mean() < 0.01 * full.std() and err.max() < 0.15 * full.std()


def test_rcan_twice_is_eq9_and_the_bound_is_bounded():
    net = tiny_rcan()
    x = torch.randn(1, 1, 8, 8) * 0.2
    out = rcan_twice(net, x, tile=64, overlap=8)  # one tile per pass
    with torch.no_grad():
        torch.testing.assert_close(out, net(net(x)), atol=1e-5, rtol=1e-4)
    assert out.shape == (1, 1, 128, 128)
    small = tiled_peak_bytes(1, 1024, 1024, 4, 128, 64)
    assert small < 0.6 * 2**30  # 2 x 64 MiB canvas + one 128 tile
    assert tiled_peak_bytes(1, 1024, 1024, 4, 1024, 64) > 10 * small  # untiled
    with pytest.raises(ValueError, match="overlap"):
        upscale_tiled(net, x, tile=8, overlap=8)
