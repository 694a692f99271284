"""The projector: the noise regulariser is the multi-scale autocorrelation penalty (0 for white noise in the limit,
large for smooth noise), the lr schedule ramps, and projecting a map the generator made recovers it far better
than the generator's average map (PSNR rising over the steps); bad targets are clear errors; missing LPIPS weights
are a WARNING naming the key."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dnpm.projector import Projector, ProjectorSettings, _lr_at, noise_regularization, project
from facelab.metrics import psnr
from facelab.nn.stylegan2 import Generator

GEN = dict(resolution=16, z_dim=32, w_dim=32, mapping_layers=2, channel_base=512, channel_max=32)
pytestmark = pytest.mark.usefixtures("one_thread")  # tests/dnpm/conftest.py


def test_noise_regularization_penalises_correlated_noise():
    torch.manual_seed(0)
    white = [torch.randn(2, 1, 32, 32)]
    smooth = [F.interpolate(torch.randn(2, 1, 8, 8), size=32, mode="bilinear", align_corners=False) * 3]
    assert noise_regularization(smooth) > 20 * noise_regularization(white)
    s = ProjectorSettings(lr=0.1, lr_rampup=0.1, lr_rampdown=0.25)
    assert _lr_at(0.0, s) == 0 and _lr_at(0.5, s) == pytest.approx(0.1) and _lr_at(0.99, s) < 0.01


def test_projection_recovers_a_generated_map():
    torch.manual_seed(0)
    gen = Generator(**GEN).eval()
    with torch.no_grad():
        target = gen.synthesis(gen.mapping(torch.randn(2, 32)), noise_mode="const")
        mean_map = gen.synthesis(gen.w_avg.expand(1, gen.n_latent, -1).clone(), noise_mode="const")
    span = float(target.max() - target.min())
    settings = ProjectorSettings(steps=50, lr=0.1, w_avg_samples=256, lpips_weight=0.0, history_every=10)
    result = project(gen, target, settings, data_range=span)
    baseline = psnr(mean_map.expand_as(target), target, data_range=span)
    print(f"projector PSNR {result.psnr.mean():.2f} dB vs the average map {baseline.mean():.2f} dB")
    assert result.ws.shape == (2, gen.n_latent, 32) and result.reconstruction.shape == target.shape
    assert (result.psnr > baseline + 6).all()
    assert result.history[-1][1] > result.history[0][1] + 3
    assert all(torch.allclose(n.std(), torch.tensor(1.0), atol=0.05) for n in result.noise)  # renormalised
    with pytest.raises(ValueError, match="NaN"):
        project(gen, torch.full_like(target, float("nan")), settings)
    with pytest.raises(ValueError, match="maps for this generator"):
        project(gen, torch.zeros(1, 3, 16, 16), settings)


def test_projector_without_lpips_weights_warns(capsys):
    capsys.readouterr()
    projector = Projector(ProjectorSettings(steps=2, w_avg_samples=64))
    assert "`lpips_weights`" in capsys.readouterr().err
    gen = Generator(**GEN)
    out = projector(gen, torch.zeros(1, 1, 16, 16) + 0.1)
    assert torch.isfinite(out.reconstruction).all()


def test_pulse_form_fits_the_degraded_output_to_the_degraded_target():
    """With ``degrade`` the loss sees ``degrade(G(ws))``: the fit recovers a generated map from its x1/4 copy better
    than the average map, and its PSNR is measured on the degraded pair."""
    from dnpm.restore_data import Degradation

    torch.manual_seed(0)
    gen = Generator(**GEN).eval()
    with torch.no_grad():
        high = gen.synthesis(gen.mapping(torch.randn(2, 32)), noise_mode="const")
        mean_map = gen.synthesis(gen.w_avg.expand(1, gen.n_latent, -1).clone(), noise_mode="const")
    degrade = Degradation(factor=4)
    low = degrade(high)
    span = float(high.max() - high.min())
    settings = ProjectorSettings(steps=50, lr=0.1, w_avg_samples=256, lpips_weight=0.0, optimize_noise=False)
    result = project(gen, low, settings, data_range=span, degrade=degrade)
    torch.testing.assert_close(result.psnr, psnr(degrade(result.reconstruction), low, data_range=span))
    recovered = psnr(result.reconstruction, high, data_range=span)
    baseline = psnr(mean_map.expand_as(high), high, data_range=span)
    print(f"PULSE-form PSNR to the high-quality map {recovered.mean():.2f} dB vs the average map "
          f"{baseline.mean():.2f} dB")
    assert (recovered > baseline + 3).all()
