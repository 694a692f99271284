"""PatchGAN (pix2pix), its multi-scale form (pix2pixHD), U-Net discriminator: shapes, the 70x70 receptive field
measured by gradients, parameter counts, spectral norm, regression heads, gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from facelab.nn import MultiscaleDiscriminator, PatchDiscriminator, UNetDiscriminator, conv_receptive_field


def empirical_receptive_field(model: nn.Module, in_channels: int, size: int) -> tuple[int, int]:
    """Rows and columns of the input that the centre output logit's gradient reaches."""
    x = torch.randn(1, in_channels, size, size, requires_grad=True)
    out = model(x)
    h, w = out.shape[-2:]
    out[0, 0, h // 2, w // 2].backward()
    reached = x.grad.abs().sum(dim=(0, 1)) > 0
    rows, cols = reached.any(dim=1).nonzero(), reached.any(dim=0).nonzero()
    return int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)


def test_patchgan_receptive_field_is_70():
    torch.manual_seed(0)
    disc = PatchDiscriminator(in_channels=3).eval()  # eval: batch norm must not mix positions through batch stats
    assert disc.receptive_field == 70
    assert empirical_receptive_field(disc, 3, 128) == (70, 70)


@pytest.mark.parametrize(("n_layers", "expected"), [(1, 16), (2, 34), (4, 142)])
def test_patchgan_receptive_field_for_other_depths(n_layers, expected):
    disc = PatchDiscriminator(in_channels=1, base_channels=4, n_layers=n_layers, norm="none")
    assert disc.receptive_field == expected == conv_receptive_field(disc)
    assert empirical_receptive_field(disc, 1, 2 * expected + 32) == (expected, expected)


def test_patchgan_layout_and_parameter_count():
    disc = PatchDiscriminator(in_channels=6)  # pix2pix facades: 2.769 M parameters
    convs = [m for m in disc.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 128, 256, 512, 1]
    assert [c.stride[0] for c in convs] == [2, 2, 2, 1, 1] and all(c.kernel_size == (4, 4) for c in convs)
    hand = (6 * 64 * 16 + 64) + (64 * 128 * 16 + 2 * 128) + (128 * 256 * 16 + 2 * 256) + (256 * 512 * 16 + 2 * 512) \
        + (512 * 16 + 1)
    assert sum(p.numel() for p in disc.parameters()) == hand == 2_768_705
    assert disc(torch.rand(1, 6, 256, 256)).shape == (1, 1, 30, 30)
    with pytest.raises(ValueError, match="n_layers"):
        PatchDiscriminator(n_layers=0)


def top_singular_value(module: nn.Module) -> float:
    with torch.no_grad():
        weight = module.weight  # the parametrized (normalised) weight
        return float(torch.linalg.matrix_norm(weight.reshape(weight.shape[0], -1), ord=2))


def test_patchgan_spectral_norm():
    torch.manual_seed(0)
    disc = PatchDiscriminator(in_channels=3, base_channels=8, norm="none", spectral_norm=True)
    x = torch.rand(1, 3, 32, 32)
    for _ in range(2):  # power iterations run in training mode (15 at registration)
        disc(x)
    convs = [m for m in disc.modules() if isinstance(m, nn.Conv2d)]
    assert all(hasattr(c, "parametrizations") for c in convs)
    assert all(abs(top_singular_value(c) - 1) < 0.05 for c in convs)


def test_unet_discriminator_outputs_and_heads():
    torch.manual_seed(0)
    disc = UNetDiscriminator(in_channels=3, channels=(8, 16, 32), heads={"au": 17, "age": 1})
    out = disc(torch.rand(2, 3, 32, 32))
    assert out.global_logit.shape == (2,)
    assert out.pixel_logits.shape == (2, 1, 32, 32)
    assert {k: v.shape for k, v in out.heads.items()} == {"au": (2, 17), "age": (2, 1)}
    assert len(UNetDiscriminator(3, channels=(8, 16)).heads) == 0
    with pytest.raises(ValueError, match="divisible by 8"):
        disc(torch.rand(1, 3, 36, 36))
    with pytest.raises(ValueError, match="positive number of outputs"):
        UNetDiscriminator(3, heads={"au": 0})


def test_unet_discriminator_global_logit_and_heads_read_the_bottleneck():
    """global = linear(sum_HW relu(e_last)) (BigGAN sum pooling); head = linear(mean_HW relu(e_last))."""
    torch.manual_seed(0)
    disc = UNetDiscriminator(in_channels=1, channels=(4, 8), heads={"au": 3}, spectral_norm=False).eval()
    seen = {}
    disc.encoder[-1].register_forward_hook(lambda m, i, o: seen.__setitem__("e", o))
    with torch.no_grad():
        out = disc(torch.rand(2, 1, 16, 16))
    e = F.relu(seen["e"])
    torch.testing.assert_close(out.global_logit, disc.global_head(e.sum(dim=(2, 3)))[:, 0])
    torch.testing.assert_close(out.heads["au"], disc.heads["au"](e.mean(dim=(2, 3))))


def test_unet_discriminator_decoder_uses_the_skips():
    """The decoder concatenates encoder features: the last decoder block sees 2 * channels[0] inputs, and a
    change confined to one image corner moves the per-pixel logits most near that corner."""
    torch.manual_seed(0)
    disc = UNetDiscriminator(in_channels=1, channels=(4, 8, 16), spectral_norm=False).eval()
    assert disc.decoder[-1].conv1.in_channels == 8 and disc.decoder[0].conv1.in_channels == 16
    x = torch.rand(1, 1, 32, 32)
    y = x.clone()
    y[..., :4, :4] += 1.0
    with torch.no_grad():
        delta = (disc(y).pixel_logits - disc(x).pixel_logits).abs()[0, 0]
    assert delta[:8, :8].mean() > 3 * delta[16:, 16:].mean()


def test_unet_discriminator_spectral_norm_and_gradients():
    torch.manual_seed(0)
    disc = UNetDiscriminator(in_channels=3, channels=(8, 16), heads={"au": 4})
    x = torch.rand(2, 3, 16, 16)
    out = disc(x)
    normalised = [m for m in disc.modules() if isinstance(m, (nn.Conv2d, nn.Linear)) and hasattr(m, "parametrizations")]
    assert len(normalised) == sum(isinstance(m, (nn.Conv2d, nn.Linear)) for m in disc.modules()) - 1  # all but the head
    # power iteration under-estimates sigma, so the normalised weights' norm approaches 1 from above
    assert all(0.99 < top_singular_value(m) < 1.1 for m in normalised)
    (out.global_logit.sum() + out.pixel_logits.mean() + out.heads["au"].square().sum()).backward()
    missing = [n for n, p in disc.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not missing


def test_float64():
    x = torch.rand(2, 1, 32, 32, dtype=torch.float64)
    out = UNetDiscriminator(1, channels=(4, 8), heads={"au": 2}).double()(x)
    assert out.pixel_logits.dtype == out.heads["au"].dtype == torch.float64
    assert PatchDiscriminator(1, base_channels=4, spectral_norm=True).double()(x).dtype == torch.float64


def test_multiscale_discriminator_scales_and_features():
    torch.manual_seed(0)
    disc = MultiscaleDiscriminator(in_channels=4, base_channels=8, n_layers=2, num_d=3).eval()
    x = torch.randn(2, 4, 128, 128)
    features = disc(x)
    assert len(features) == 3 and all(len(f) == 2 + 2 for f in features)  # n_layers + 1 activations, then logits
    for k, f in enumerate(features):  # scale k sees the input average-pooled k times
        pooled = x
        for _ in range(k):
            pooled = F.avg_pool2d(pooled, 3, stride=2, padding=1, count_include_pad=False)
        torch.testing.assert_close(f[-1], disc.scales[k](pooled))
        torch.testing.assert_close(f[0], disc.scales[k].model[:2](pooled))  # the first conv + LeakyReLU
    assert [t.shape[-1] for t in MultiscaleDiscriminator.logits(features)] == [30, 14, 6]
    with pytest.raises(ValueError, match="num_d"):
        MultiscaleDiscriminator(num_d=0)
