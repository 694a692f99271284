"""Equalized learning rate (ProGAN §4.1 / StyleGAN2): effective weight std gain/sqrt(fan_in), run-time scaling of
forward and gradients, lr multiplier, bias init, activation gain."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from facelab.nn import EqualConv2d, EqualLinear, bias_act


@pytest.mark.parametrize(("gain", "lr_multiplier"), [(1.0, 1.0), (math.sqrt(2), 1.0), (1.0, 0.01)])
def test_effective_weight_std_is_gain_over_sqrt_fan_in(gain, lr_multiplier):
    torch.manual_seed(0)
    linear = EqualLinear(256, 512, gain=gain, lr_multiplier=lr_multiplier)
    assert abs(linear.weight.std().item() * lr_multiplier - 1) < 0.02  # stored ~ N(0, 1) / lr_multiplier
    assert abs(linear.effective_weight().std().item() * math.sqrt(256) / gain - 1) < 0.02
    conv = EqualConv2d(32, 64, 3, gain=gain, lr_multiplier=lr_multiplier)
    assert abs(conv.effective_weight().std().item() * math.sqrt(32 * 9) / gain - 1) < 0.03


def test_forward_uses_the_scaled_weight_and_bias():
    torch.manual_seed(0)
    linear = EqualLinear(8, 4, bias_init=1.0, lr_multiplier=0.1)
    torch.testing.assert_close(linear.effective_bias(), torch.ones(4))  # the effective initial bias is bias_init
    x = torch.randn(3, 5, 8)
    torch.testing.assert_close(linear(x), F.linear(x, linear.weight * 0.1 / math.sqrt(8), linear.bias * 0.1))
    conv = EqualConv2d(3, 6, 3, stride=2, bias_init=0.5)
    x = torch.randn(2, 3, 9, 9)
    torch.testing.assert_close(conv(x), F.conv2d(x, conv.weight / math.sqrt(27), torch.full((6,), 0.5), 2, 1))
    assert conv(x).shape == (2, 6, 5, 5)
    with pytest.raises(ValueError, match=r"\(\.\.\., 8\)"):
        linear(torch.randn(2, 7))


def test_gradients_of_the_stored_weight_are_scaled_at_run_time():
    """d loss / d stored = weight_gain * d loss / d effective: with Adam's scale-free steps, the effective weight
    moves by ~lr * gain * lr_multiplier / sqrt(fan_in), the same relative speed for every layer."""
    torch.manual_seed(0)
    layer = EqualLinear(16, 4, lr_multiplier=0.01)
    x = torch.randn(5, 16)
    layer(x).square().sum().backward()
    effective = layer.effective_weight().detach().requires_grad_()
    F.linear(x, effective, layer.effective_bias().detach()).square().sum().backward()
    torch.testing.assert_close(layer.weight.grad, effective.grad * 0.01 / 4)
    assert layer.bias.grad is not None


def test_unit_variance_is_kept_through_layers():
    torch.manual_seed(0)
    x = torch.randn(4096, 512)
    y = EqualLinear(512, 512)(x)
    assert abs(y.std().item() - 1) < 0.05  # linear: gain 1
    z = EqualLinear(512, 512, activation="leaky_relu")(x)
    assert abs(z.square().mean().item() - 1.04) < 0.06  # lrelu(0.2) * sqrt(2) keeps E[x^2]: 2 * (1 + 0.04) / 2
    img = torch.randn(8, 64, 16, 16)
    assert abs(EqualConv2d(64, 64, 3)(img)[..., 1:-1, 1:-1].std().item() - 1) < 0.05


def test_bias_act():
    x = torch.tensor([[-1.0, 2.0]])
    torch.testing.assert_close(bias_act(x, torch.tensor([0.5, 0.5]), "leaky_relu"),
                               torch.tensor([[-0.1, 2.5]]) * math.sqrt(2))
    assert torch.equal(bias_act(x, None), x)
    with pytest.raises(ValueError, match="activation"):
        EqualLinear(2, 2, activation="relu")
