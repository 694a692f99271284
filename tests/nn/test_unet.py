"""facelab.nn.UNet: shapes over configurations, hand-counted parameters, skip modes, resampling, conditioning hook."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from facelab.nn import AdaIN, FiLM, UNet


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def double_conv_params(a: int, b: int, norm: str = "batch") -> int:
    """Two 3x3 convs (bias only without norm) + two norms (BatchNorm: weight and bias)."""
    conv = 9 * a * b + 9 * b * b + (2 * b if norm == "none" else 0)
    return conv + (4 * b if norm == "batch" else 0)


# every value of every option at least twice, each pair of skip/upsample modes once
CONFIGS = [(norm, skip, up, down) for (skip, up), norm, down in zip(
    itertools.product(("concat", "add"), ("transpose", "bilinear", "nearest")),
    ("batch", "instance", "none", "none", "batch", "instance"), ("max", "avg", "conv", "max", "conv", "avg"))]


@pytest.mark.parametrize(("norm", "skip", "upsample", "downsample"), CONFIGS)
def test_output_shape_over_configs(norm, skip, upsample, downsample):
    torch.manual_seed(0)
    unet = UNet(3, 2, channels=(4, 8), bottleneck_channels=8, n_res_blocks=1, norm=norm, skip=skip,
                upsample=upsample, downsample=downsample)
    out = unet(torch.rand(2, 3, 8, 12))
    assert out.shape == (2, 2, 8, 12) and torch.isfinite(out).all()


@pytest.mark.parametrize("depth", [1, 2, 3, 5])
def test_depth_sets_the_size_divisor(depth):
    unet = UNet(1, 1, channels=[4] * depth, n_res_blocks=0).eval()
    assert len(unet.down) == len(unet.up) == len(unet.up_convs) == depth
    size = 2 ** depth
    assert unet(torch.rand(1, 1, size, 2 * size)).shape == (1, 1, size, 2 * size)
    with pytest.raises(ValueError, match=f"divisible by {size}"):
        unet(torch.rand(1, 1, size + 1, size))


def test_parameter_count_by_hand():
    kw = dict(channels=(4, 8), bottleneck_channels=16, n_res_blocks=1)
    enc = double_conv_params(3, 4) + double_conv_params(4, 8) + double_conv_params(8, 16)
    res = 2 * (9 * 16 * 16) + 2 * 2 * 16  # two bias-free 3x3 convs + two BatchNorms
    up = (16 * 8 * 4 + 8) + (8 * 4 * 4 + 4)  # ConvTranspose2d(2, 2)
    out = 4 * 2 + 2
    concat = enc + res + up + double_conv_params(16, 8) + double_conv_params(8, 4) + out
    add = enc + res + up + double_conv_params(8, 8) + double_conv_params(4, 4) + out
    assert (concat, add) == (12_226, 11_506)
    assert n_params(UNet(3, 2, skip="concat", **kw)) == concat
    assert n_params(UNet(3, 2, skip="add", **kw)) == add
    # no norm: convolutions get biases, nothing else; bilinear up-sampling: interpolation + 3x3 conv
    bare = UNet(3, 2, channels=(4,), bottleneck_channels=8, norm="none", upsample="bilinear")
    assert n_params(bare) == (double_conv_params(3, 4, "none") + double_conv_params(4, 8, "none")
                              + (9 * 8 * 4 + 4) + double_conv_params(8, 4, "none") + out)
    assert n_params(UNet(3, 2, channels=(4, 8), bottleneck_channels=16, norm="instance")) == n_params(
        UNet(3, 2, channels=(4, 8), bottleneck_channels=16, norm="batch")) - 4 * (4 + 8 + 16 + 8 + 4)


@pytest.mark.parametrize("skip", ["concat", "add"])
def test_skip_mode_feeds_the_decoder(skip):
    """The last decoder block sees cat(up(x), skip) or up(x) + skip, skip = the first encoder level's features."""
    torch.manual_seed(0)
    unet = UNet(3, 1, channels=(4, 8), bottleneck_channels=8, skip=skip).eval()
    seen = {}
    unet.down[0].register_forward_hook(lambda m, i, o: seen.__setitem__("skip", o.clone()))
    unet.up[-1].register_forward_hook(lambda m, i, o: seen.__setitem__("up", o.clone()))
    unet.up_convs[-1].register_forward_pre_hook(lambda m, i: seen.__setitem__("in", i[0].clone()))
    with torch.no_grad():
        unet(torch.rand(1, 3, 8, 8))
    expected = torch.cat([seen["up"], seen["skip"]], 1) if skip == "concat" else seen["up"] + seen["skip"]
    torch.testing.assert_close(seen["in"], expected)


def test_sigmoid_and_tanh_outputs_wrap_the_logits():
    torch.manual_seed(0)
    logits = UNet(3, 2, channels=(4,), out_activation="none").eval()
    for name, fn in (("sigmoid", torch.sigmoid), ("tanh", torch.tanh)):
        unet = UNet(3, 2, channels=(4,), out_activation=name).eval()
        unet.load_state_dict(logits.state_dict())
        x = torch.rand(2, 3, 4, 4)
        with torch.no_grad():
            torch.testing.assert_close(unet(x), fn(logits(x)))


@pytest.mark.parametrize("hook", [AdaIN, FiLM])
def test_conditioning_hook_changes_the_output(hook):
    torch.manual_seed(0)
    unet = UNet(3, 2, channels=(4, 8), bottleneck_channels=16, norm="instance", condition_dim=5,
                conditioning=hook).eval()
    assert [m.num_features for m in unet.cond] == [16, 8, 4]  # bottleneck + every decoder level
    x = torch.rand(2, 3, 8, 8)
    c1, c2 = torch.randn(2, 5), torch.randn(2, 5)
    with torch.no_grad():
        y1, y2, y1_again = unet(x, c1), unet(x, c2), unet(x, c1)
    assert torch.equal(y1, y1_again) and (y1 - y2).abs().max() > 1e-3
    c = c1.clone().requires_grad_()
    unet(x, c).sum().backward()
    assert c.grad is not None and c.grad.abs().sum() > 0
    with pytest.raises(ValueError, match=r"\(B, 5\) condition"):
        unet(x)
    with pytest.raises(ValueError, match="conditioning and condition_dim"):
        UNet(3, 2, channels=(4,), condition_dim=5)
    with pytest.raises(ValueError, match="no conditioning hook"):
        UNet(3, 2, channels=(4,))(x, c1)


def test_custom_hook_is_called_once_per_level():
    calls = []

    class Record(nn.Module):
        def __init__(self, channels: int, condition_dim: int) -> None:
            super().__init__()
            self.proj = nn.Linear(condition_dim, channels)

        def forward(self, x, condition):
            calls.append(tuple(x.shape))
            return x + self.proj(condition)[..., None, None]

    unet = UNet(1, 1, channels=(4, 8), bottleneck_channels=8, condition_dim=3, conditioning=Record)
    unet(torch.rand(2, 1, 8, 8), torch.randn(2, 3))
    assert calls == [(2, 8, 2, 2), (2, 8, 4, 4), (2, 4, 8, 8)]


@pytest.mark.parametrize(("norm", "skip", "upsample", "downsample"),
                         [("batch", "concat", "transpose", "max"), ("instance", "add", "bilinear", "conv"),
                          ("none", "add", "nearest", "avg")])
def test_gradients_reach_every_parameter(norm, skip, upsample, downsample):
    torch.manual_seed(0)
    unet = UNet(2, 1, channels=(4, 8), bottleneck_channels=8, n_res_blocks=1, norm=norm, skip=skip,
                upsample=upsample, downsample=downsample, condition_dim=3, conditioning=AdaIN)
    unet(torch.rand(2, 2, 8, 8), torch.randn(2, 3)).square().mean().backward()
    missing = [n for n, p in unet.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not missing


def test_bad_configurations_are_refused():
    with pytest.raises(ValueError, match="skip"):
        UNet(1, 1, skip="sum")
    with pytest.raises(ValueError, match="norm"):
        UNet(1, 1, norm="group")
    with pytest.raises(ValueError, match="upsample"):
        UNet(1, 1, upsample="pixelshuffle")
    with pytest.raises(ValueError, match="at least one"):
        UNet(1, 1, channels=())


def test_float64():
    unet = UNet(2, 1, channels=(4,), n_res_blocks=1, condition_dim=3, conditioning=AdaIN).double()
    assert unet(torch.rand(1, 2, 4, 4, dtype=torch.float64), torch.randn(1, 3, dtype=torch.float64)).dtype == \
        torch.float64
