"""The texture stream's networks: SSRPM (Eq. 9-11), SRSM (Eq. 12-14), the additive-skip generator."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dualstream.texture import SRSM, SSRPM, GlobalAdaIN, TextureGenerator, landmark_heatmaps, region_instance_norm
from facelab.nn.conditioning import adain

SMALL = dict(channels=(8, 16, 16), region_level=2, stylize_levels=(2,), hidden_channels=8)


def _randomise(module: torch.nn.Module) -> None:
    g = torch.Generator().manual_seed(0)
    for p in module.parameters():
        p.data = torch.randn(p.shape, generator=g) * 0.3


def test_heatmaps_peak_at_the_landmark():
    lmk = torch.tensor([[[10.5, 4.5], [3.5, 12.5]]])
    heat = landmark_heatmaps(lmk, (16, 16), sigma=1.0)
    assert heat.shape == (1, 2, 16, 16)
    assert heat[0, 0].argmax() == 4 * 16 + 10 and heat[0, 1].argmax() == 12 * 16 + 3
    assert heat.max() == pytest.approx(1.0)


def test_srsm_with_one_region_is_instance_norm_adain():
    srsm = SRSM(albedo_channels=6, image_channels=5, hidden_channels=7)
    _randomise(srsm)
    x_u, x_o = torch.randn(2, 6, 8, 8), torch.randn(2, 5, 8, 8)
    out = srsm(x_u, x_o, torch.ones(2, 1, 8, 8))
    albedo_act, image_act = srsm.activations(x_u, x_o)
    gamma, beta = srsm.gamma(image_act).mean(dim=(2, 3)), srsm.beta(image_act).mean(dim=(2, 3))
    torch.testing.assert_close(out, adain(albedo_act, gamma, beta), atol=1e-4, rtol=1e-4)
    ablation = GlobalAdaIN(6, 5, 7)
    ablation.load_state_dict(srsm.state_dict())
    torch.testing.assert_close(ablation(x_u, x_o, None), out, atol=1e-4, rtol=1e-4)


def test_region_norm_with_hard_masks_normalises_each_region_alone():
    x = torch.randn(1, 3, 6, 6)
    left = torch.zeros(1, 1, 6, 6)
    left[..., :3] = 1
    regions = torch.cat([left, 1 - left], dim=1)
    alpha = torch.tensor([[[1.0, 2.0, 0.5], [3.0, 1.0, 1.0]]])
    beta = torch.tensor([[[0.0, 1.0, -1.0], [5.0, 0.0, 2.0]]])
    out = region_instance_norm(x, regions, alpha, beta, eps=0.0)
    for j, cols in enumerate((slice(0, 3), slice(3, 6))):
        part = x[..., cols]
        ref = F.instance_norm(part, eps=0.0) * alpha[0, j][None, :, None, None] + beta[0, j][None, :, None, None]
        torch.testing.assert_close(out[..., cols], ref, atol=1e-5, rtol=1e-5)


def test_ssrpm_regions_are_a_softmax_with_kappa_initialised_to_1e_2():
    ssrpm = SSRPM(8, 8, hidden_channels=8, num_regions=16)
    assert ssrpm.kappa.item() == pytest.approx(1e-2)
    image = torch.rand(2, 3, 32, 32)
    heat = landmark_heatmaps(torch.rand(2, 68, 2) * 32, (32, 32))
    regions = ssrpm(torch.randn(2, 8, 8, 8), torch.randn(2, 8, 8, 8), heat, image)
    assert regions.shape == (2, 16, 8, 8)
    torch.testing.assert_close(regions.sum(1), torch.ones(2, 8, 8))
    with pytest.raises(ValueError, match="heatmaps"):
        ssrpm(torch.randn(2, 8, 8, 8), torch.randn(2, 8, 8, 8), heat[:, :10], image)


def test_generator_skips_are_additive_layer_l_to_h_minus_l():
    gen = TextureGenerator(**SMALL, num_regions=4, input_skip=False)
    calls = []
    orig = gen.additive_skip
    gen.additive_skip = lambda x, skip: calls.append((x.clone(), skip.clone())) or orig(x, skip)
    enc_out = {}
    for i, block in enumerate(gen.albedo_encoder):
        block.register_forward_hook(lambda m, a, o, i=i: enc_out.__setitem__(i, o))
    dec_in = {}
    for i, block in enumerate(gen.decoder):
        block.register_forward_pre_hook(lambda m, a, i=i: dec_in.__setitem__(i, a[0]))
    a, im = torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32)
    gen(a, im, landmark_heatmaps(torch.rand(1, 68, 2) * 32, (32, 32)))
    assert len(calls) == gen.depth - 1  # every encoder level but the bottleneck feeds a decoder level
    # level 1 (the outermost inner skip): decoder input = previous decoder output + encoder layer 1, channels
    # unchanged (added, not concatenated)
    x, skip = calls[-1]
    torch.testing.assert_close(skip, enc_out[0])
    assert dec_in[0].shape == enc_out[0].shape
    assert gen.decoder[0].block[0].in_channels == SMALL["channels"][0]
    with pytest.raises(ValueError, match="equal shapes"):
        gen.additive_skip(torch.zeros(1, 2, 4, 4), torch.zeros(1, 4, 4, 4))


@pytest.mark.parametrize("stylization,regions", [("srsm", 8), ("srsm", 16), ("srsm", 32), ("adain", 16)])
def test_generator_output_and_gradients(stylization, regions):
    gen = TextureGenerator(**SMALL, num_regions=regions, stylization=stylization)
    a, im = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    out, reg = gen(a, im, landmark_heatmaps(torch.rand(2, 68, 2) * 32, (32, 32)))
    assert out.shape == (2, 3, 32, 32) and reg.shape == (2, regions, 8, 8)
    assert 0 <= out.min() and out.max() <= 1
    (out.square().mean() + reg.square().mean()).backward()
    missing = [n for n, p in gen.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    if stylization == "adain":  # the ablation ignores SSRPM's regions for the texture: only its output uses them
        missing = [n for n in missing if not n.startswith("ssrpm")]
    assert not missing


def test_generator_refuses_maps_of_the_wrong_size():
    gen = TextureGenerator(**SMALL, num_regions=4)
    heat = landmark_heatmaps(torch.rand(1, 68, 2) * 32, (32, 32))
    with pytest.raises(ValueError, match="divisible"):
        gen(torch.rand(1, 3, 30, 30), torch.rand(1, 3, 32, 32), heat)
    with pytest.raises(ValueError, match="albedo maps"):
        gen(torch.rand(1, 1, 32, 32), torch.rand(1, 3, 32, 32), heat)
    with pytest.raises(ValueError, match="stylize_levels"):
        TextureGenerator(channels=(8, 16), stylize_levels=(3,), region_level=1)
