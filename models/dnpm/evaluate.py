"""Measuring DNPM against known truth: a Fréchet distance on fixed random features (an FID stand-in that needs no
Inception weights), projector PSNR on held-out maps, and Detailed3DMM's Table I metrics (PSNR / SSIM), each beside
the trivial baselines.

* :class:`RandomMapFeatures`: a fixed, seeded random CNN (three stride-2 convs, ReLU, global mean and std pooling)
  for (B, 1, S, S) maps: random features are a fair "small fixed feature extractor" for comparing distributions
  of the same kind of map (what matters is that real, generated and baseline sets go through the same one).
* :func:`frechet_distance`: ``|mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2))`` of two feature sets.
* :func:`generator_fd`: FD of a generator's samples vs held-out maps; :func:`constant_fd`: FD of the trivial
  "mean map" generator (every sample the train mean).
* :func:`detailed3dmm_scores`: held-out PSNR / SSIM of a Detailed3DMM vs the train-mean map.

Shapes: ``B`` maps, ``S`` map side, ``F`` features.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import linalg
from torch import Tensor, nn

from dnpm.detailed3dmm import synthesize
from facelab.metrics import psnr, ssim

__all__ = ["MapScores", "RandomMapFeatures", "constant_fd", "detailed3dmm_scores", "frechet_distance",
           "generator_fd", "sample_maps"]


class RandomMapFeatures(nn.Module):
    """A frozen, seeded random CNN: (B, C, S, S) -> (B, 2 * width) (channel means and stds of three stride-2
    conv + ReLU stages, concatenated over stages)."""

    def __init__(self, channels: int = 1, width: int = 32, seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        convs, c = [], channels
        for w in (width // 2, width, width):
            conv = nn.Conv2d(c, w, 3, stride=2, padding=1)
            with torch.no_grad():
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen) / (3.0 * c ** 0.5))
                conv.bias.zero_()
            convs.append(conv)
            c = w
        self.convs = nn.ModuleList(convs)
        self.requires_grad_(False).eval()

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        feats = []
        for conv in self.convs:
            x = torch.relu(conv(x))
            feats += [x.mean(dim=(2, 3)), x.std(dim=(2, 3))]
        return torch.cat(feats, dim=1)


def frechet_distance(a: Tensor, b: Tensor) -> float:
    """Fréchet distance between Gaussians fitted to (N, F) and (M, F) features (float64, scipy's sqrtm)."""
    a, b = a.double().cpu().numpy(), b.double().cpu().numpy()
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean, _ = linalg.sqrtm(cov_a @ cov_b, disp=False)
    covmean = covmean.real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * covmean))


@torch.no_grad()
def sample_maps(generator: nn.Module, n: int, seed: int = 0, batch: int = 64) -> Tensor:
    """(n, C, S, S) maps of the generator at fresh z (no truncation, constant noise)."""
    device = next(generator.parameters()).device
    z = torch.randn(n, generator.z_dim, generator=torch.Generator().manual_seed(seed)).to(device)
    return torch.cat([synthesize(generator, generator.mapping(chunk)) for chunk in z.split(batch)])


def generator_fd(generator: nn.Module, real: Tensor, features: nn.Module, seed: int = 0) -> float:
    """FD between the features of ``len(real)`` generated maps and of (N, C, S, S) real maps."""
    fake = sample_maps(generator.eval(), real.shape[0], seed).to(real)
    return frechet_distance(features(real), features(fake))


def constant_fd(mean_map: Tensor, real: Tensor, features: nn.Module) -> float:
    """FD of the trivial generator whose every sample is ``mean_map`` (C, S, S), vs (N, C, S, S) real maps."""
    fake = mean_map[None].expand_as(real)
    return frechet_distance(features(real), features(fake))


@dataclass
class MapScores:
    """Mean held-out PSNR / SSIM of a predictor and of the train-mean map baseline (Table I metrics)."""

    psnr: float
    ssim: float
    baseline_psnr: float
    baseline_ssim: float

    def format(self, name: str) -> str:
        return (f"{name}: PSNR {self.psnr:.2f} dB / SSIM {self.ssim:.3f}  vs mean map {self.baseline_psnr:.2f} dB / "
                f"{self.baseline_ssim:.3f}")


@torch.no_grad()
def detailed3dmm_scores(model: nn.Module, target: Tensor, identity: Tensor, expression: Tensor, mean_map: Tensor,
                        data_range: float) -> MapScores:
    """PSNR / SSIM of ``model.generate(model.latents(id, exp))`` on (N, 1, S, S) held-out maps (generator units)
    beside the (1, S, S) train-mean map."""
    pred = torch.cat([model.generate(model.latents(i, e)) for i, e in zip(identity.split(64), expression.split(64))])
    base = mean_map[None].expand_as(target)
    return MapScores(psnr=float(psnr(pred, target, data_range=data_range).mean()),
                     ssim=float(ssim(pred, target, data_range=data_range).mean()),
                     baseline_psnr=float(psnr(base, target, data_range=data_range).mean()),
                     baseline_ssim=float(ssim(base, target, data_range=data_range).mean()))
