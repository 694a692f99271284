"""Shared conv blocks: norm/activation factories, DoubleConv's stable key layout, the pix2pix residual block."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from facelab.nn import DoubleConv, ResidualBlock, activation_layer, norm_layer


def test_factories():
    assert isinstance(norm_layer("batch", 4), nn.BatchNorm2d)
    instance = norm_layer("instance", 4)
    assert isinstance(instance, nn.InstanceNorm2d) and not instance.affine  # pix2pix: no affine
    assert isinstance(norm_layer("none", 4), nn.Identity)
    lrelu = activation_layer("leaky_relu")
    assert isinstance(lrelu, nn.LeakyReLU) and lrelu.negative_slope == 0.2
    with pytest.raises(ValueError, match="norm must be"):
        norm_layer("layer", 4)
    with pytest.raises(ValueError, match="unknown activation"):
        activation_layer("swish")


@pytest.mark.parametrize("norm", ["batch", "instance", "none"])
def test_double_conv_keys_do_not_depend_on_the_norm(norm):
    block = DoubleConv(3, 8, norm=norm)
    weights = {k for k in block.state_dict() if k.endswith("weight")}
    convs = {"0.weight", "3.weight"}
    assert weights == (convs | {"1.weight", "4.weight"} if norm == "batch" else convs)
    assert (block[0].bias is None) == (norm != "none")  # a norm's mean subtraction would cancel a bias
    assert block(torch.rand(2, 3, 5, 5)).shape == (2, 8, 5, 5)


def test_residual_block_is_identity_plus_body():
    torch.manual_seed(0)
    block = ResidualBlock(4, norm="none")
    x = torch.randn(1, 4, 6, 6)
    torch.testing.assert_close(block(x), x + block.body(x))
    nn.init.zeros_(block.body[5].weight), nn.init.zeros_(block.body[5].bias)
    torch.testing.assert_close(block(x), x)
