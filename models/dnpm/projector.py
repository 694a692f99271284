"""GAN inversion of displacement maps into DNPM's w+ space (the StyleGAN2 projector, Karras et al. 2020 §5, App. D,
applied per map and in w+ as DNPM uses w+).

Optimises ``ws`` (B, N, D), initialised at ``w_avg``, and the per-layer noise maps for a target map::

    L = pixel_weight * |G(ws, noise) - target|^2  +  lpips_weight * LPIPS(G(ws, noise), target)
        + noise_weight * sum_levels (mean(n * roll_x(n))^2 + mean(n * roll_y(n))^2)

(with ``degrade``, PULSE's form for restoration baselines: ``degrade(G(ws, noise))`` takes the place of ``G``, and
the target is the degraded map);

* the noise regulariser penalises the autocorrelation of each noise map at every scale of its pyramid (down to
  8x8, 2x2 average pooling), so the noise cannot carry the image; after every step each noise map is renormalised
  to zero mean and unit variance;
* ``ws`` gets ramped Gaussian noise ``w_std * initial_noise_factor * max(0, 1 - t / noise_ramp)^2`` during the
  first ``noise_ramp`` of the steps (``w_std`` measured from ``w_avg_samples`` mapped z's);
* the learning rate ramps up over ``lr_rampup`` and down with a cosine over the last ``lr_rampdown`` of the steps.

LPIPS (AlexNet, :class:`facelab.losses.LPIPS`) needs local trunk weights; without them the term runs on a frozen
random AlexNet with a WARNING naming ``lpips_weights``, and the pixel term still carries the fit. Use it for
users' maps (latents for edits / applications) and as the optimisation baseline of the applications issue.

Shapes: ``B`` maps, ``N`` latents, ``D`` w size, ``S`` map side.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dnpm.detailed3dmm import map_lpips
from facelab.log import get_logger, warn_missing_weights
from facelab.losses import LPIPS
from facelab.metrics import psnr

__all__ = ["ProjectionResult", "Projector", "ProjectorSettings", "noise_regularization", "project"]

log = get_logger(__name__)


@dataclass
class ProjectorSettings:
    """The projector's schedule and loss weights (StyleGAN2's projector defaults, steps reduced).

    Attributes:
        steps: optimisation steps (StyleGAN2: 1000).
        lr: Adam's peak learning rate (0.1).
        lr_rampup: fraction of the steps of linear lr warm-up (0.05).
        lr_rampdown: fraction of the steps of cosine lr decay at the end (0.25).
        initial_noise_factor: std of the noise added to ws at step 0, in units of ``w_std`` (0.05).
        noise_ramp: fraction of the steps over which that noise goes to 0 (0.75).
        noise_weight: weight of the noise autocorrelation penalty (1e5).
        pixel_weight: weight of the pixel MSE (in units of the map's variance scale ``pixel_scale``).
        lpips_weight: weight of LPIPS (1).
        w_avg_samples: z samples for ``w_std`` (10000).
        optimize_noise: also optimise the noise maps (False: the generator's constant noise).
        history_every: steps between PSNR records.
    """

    steps: int = 500
    lr: float = 0.1
    lr_rampup: float = 0.05
    lr_rampdown: float = 0.25
    initial_noise_factor: float = 0.05
    noise_ramp: float = 0.75
    noise_weight: float = 1e5
    pixel_weight: float = 1.0
    lpips_weight: float = 1.0
    w_avg_samples: int = 10000
    optimize_noise: bool = True
    history_every: int = 10


@dataclass
class ProjectionResult:
    """What :func:`project` returns.

    Attributes:
        ws: (B, N, D) the w+ codes.
        noise: the optimised noise maps, one (B, 1, r, r) per synthesis layer.
        reconstruction: (B, C, S, S) ``G(ws, noise)``.
        psnr: (B,) final PSNR against the target (``data_range``; of the degraded reconstruction with ``degrade``).
        history: ``[(step, mean PSNR)]`` every ``history_every`` steps.
    """

    ws: Tensor
    noise: list[Tensor]
    reconstruction: Tensor
    psnr: Tensor
    history: list[tuple[int, float]] = field(default_factory=list)


def noise_regularization(noise: list[Tensor]) -> Tensor:
    """Multi-scale autocorrelation penalty of noise maps (B, 1, r, r): at each level (down to 8x8, 2x2 average
    pooling) ``mean(n * roll(n, 1, x))^2 + mean(n * roll(n, 1, y))^2`` (per sample), summed over levels and maps,
    averaged over the batch."""
    total = noise[0].new_zeros(noise[0].shape[0])
    for n in noise:
        while True:
            total = total + (n * n.roll(1, dims=3)).mean(dim=(1, 2, 3)).square()
            total = total + (n * n.roll(1, dims=2)).mean(dim=(1, 2, 3)).square()
            if n.shape[-1] <= 8:
                break
            n = F.avg_pool2d(n, 2)
    return total.mean()


def _lr_at(t: float, s: ProjectorSettings) -> float:
    ramp = min(1.0, (1.0 - t) / max(s.lr_rampdown, 1e-8))
    ramp = 0.5 - 0.5 * math.cos(ramp * math.pi)
    return s.lr * ramp * min(1.0, t / max(s.lr_rampup, 1e-8))


@torch.no_grad()
def w_statistics(generator: nn.Module, samples: int, seed: int = 123) -> tuple[Tensor, float]:
    """(D,) mean and the scalar std of w over ``samples`` mapped z (the projector's init and noise scale)."""
    device = next(generator.parameters()).device
    z = torch.randn(samples, generator.z_dim, generator=torch.Generator().manual_seed(seed)).to(device)
    w = torch.cat([generator.mapping(chunk)[:, 0] for chunk in z.split(1024)])
    mean = w.mean(0)
    return mean, float(((w - mean).square().sum(1).mean()).sqrt())


def project(generator: nn.Module, target: Tensor, settings: ProjectorSettings | None = None,
            lpips: nn.Module | None = None, data_range: float = 2.0, seed: int = 0,
            degrade: Callable[[Tensor], Tensor] | None = None) -> ProjectionResult:
    """Invert (B, C, S, S) target maps into w+ (+ noise) of a frozen generator (module docstring).

    Args:
        generator: a :class:`facelab.nn.stylegan2.Generator` (its parameters are not changed).
        target: maps in the generator's units.
        settings: schedule and weights.
        lpips: a perceptual distance module (:class:`facelab.losses.LPIPS`, signed input; applied through
            :func:`dnpm.detailed3dmm.map_lpips`); None: pixel loss only.
        data_range: value span for the PSNR (2 for the FaceScape encoding's [-1, 1]).
        seed: the ws / noise initialisation seed.
        degrade: PULSE's down-scaling consistency (Menon et al. 2020): the losses and the reported PSNR compare
            ``degrade(G(ws))`` with a degraded ``target`` (e.g. :class:`dnpm.restore_data.Degradation` of the
            x1/4 input), so the generator's output is a high-quality map whose degraded copy is the input. None:
            ``G(ws)`` itself is fitted to ``target``. ``reconstruction`` is always ``G(ws)``.
    """
    s = settings or ProjectorSettings()
    if target.dim() != 4 or target.shape[1:] != (generator.channels, generator.resolution, generator.resolution):
        raise ValueError(f"targets must be (B, {generator.channels}, {generator.resolution}, {generator.resolution}) "
                         f"maps for this generator, got {tuple(target.shape)}")
    if not torch.isfinite(target).all():
        raise ValueError("the target maps contain NaN or infinite values")
    generator = generator.eval()
    target = target.detach()
    b = target.shape[0]
    gen = torch.Generator().manual_seed(seed)
    w_mean, w_std = w_statistics(generator, s.w_avg_samples)
    ws = w_mean.detach()[None, None].repeat(b, generator.n_latent, 1).requires_grad_(True)
    noise = [torch.randn(b, *shape[1:], generator=gen).to(target) for shape in generator.synthesis.noise_shapes()]
    for n in noise:
        n.requires_grad_(s.optimize_noise)
    params = [ws] + (noise if s.optimize_noise else [])
    opt = torch.optim.Adam(params, lr=s.lr, betas=(0.9, 0.999))
    pixel_scale = target.flatten(1).var(1).mean().clamp_min(1e-12)
    history: list[tuple[int, float]] = []
    for step in range(s.steps):
        t = step / max(s.steps, 1)
        for group in opt.param_groups:
            group["lr"] = _lr_at(t, s)
        w_noise = w_std * s.initial_noise_factor * max(0.0, 1.0 - t / max(s.noise_ramp, 1e-8)) ** 2
        ws_in = ws + torch.randn(ws.shape, generator=gen).to(ws) * w_noise
        synth = generator.synthesis(ws_in, noise=noise if s.optimize_noise else None, noise_mode="const")
        if degrade is not None:
            synth = degrade(synth)
        loss = s.pixel_weight * (synth - target).square().mean() / pixel_scale
        if lpips is not None and s.lpips_weight:
            loss = loss + s.lpips_weight * map_lpips(lpips, synth, target)
        if s.optimize_noise and s.noise_weight:
            loss = loss + s.noise_weight * noise_regularization(noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if s.optimize_noise:
            with torch.no_grad():  # renormalise the noise maps
                for n in noise:
                    n.sub_(n.mean(dim=(1, 2, 3), keepdim=True)).div_(n.std(dim=(1, 2, 3), keepdim=True) + 1e-8)
        if step % s.history_every == 0 or step == s.steps - 1:
            with torch.no_grad():
                history.append((step, float(psnr(synth.detach(), target, data_range=data_range).mean())))
    with torch.no_grad():
        recon = generator.synthesis(ws, noise=noise if s.optimize_noise else None, noise_mode="const")
        final = psnr(recon if degrade is None else degrade(recon), target, data_range=data_range)
    return ProjectionResult(ws=ws.detach(), noise=[n.detach() for n in noise], reconstruction=recon, psnr=final,
                            history=history)


class Projector(nn.Module):
    """:func:`project` with its settings and LPIPS network (the thin Module).

    Args:
        settings: schedule and weights (None: :class:`ProjectorSettings`).
        lpips_weights: torchvision AlexNet state dict for LPIPS; None: a frozen random AlexNet with a WARNING
            (``lpips_weight: 0`` in the settings skips LPIPS altogether).
    """

    def __init__(self, settings: ProjectorSettings | None = None, lpips_weights: str | None = None) -> None:
        super().__init__()
        self.settings = settings or ProjectorSettings()
        self.lpips = None
        if self.settings.lpips_weight:
            self.lpips = LPIPS("alex", trunk_weights_path=lpips_weights, allow_random=lpips_weights is None,
                               input_range="signed")
            if lpips_weights is None:
                warn_missing_weights("lpips_weights", "AlexNet (LPIPS, projector)", "the projector's LPIPS term runs "
                                     "on a frozen RANDOM AlexNet; the pixel term carries the fit", logger=__name__)

    def forward(self, generator: nn.Module, target: Tensor, data_range: float = 2.0, seed: int = 0,
                degrade: Callable[[Tensor], Tensor] | None = None) -> ProjectionResult:
        if self.lpips is not None:
            self.lpips.to(target.device)
        return project(generator, target, self.settings, self.lpips, data_range, seed, degrade)
