"""``DnpmModule``: DNPM's generator (paper §III, Eq. 1) trained with the StyleGAN2 / StyleGAN2-ADA recipe.

The paper "follows the suggested parameters in StyleGAN2-Ada" over ~7k FaceScape displacement maps at 1024^2;
the recipe (``shared/docs/dnpm_reference.md``, "DNPM = StyleGAN2 over displacement maps"), per training batch:

* **G main**: ``z -> mapping -> w`` (style mixing with probability 0.9: a second ``z`` takes over from a random
  layer on) ``-> synthesis -> ADA augment -> D``; non-saturating loss ``softplus(-D(G(z)))``.
* **G reg** every ``pl_interval`` (4) G steps: path-length regularisation ``(|J_w^T y| - a)^2`` on half the batch,
  weight ``pl_weight`` (2) times the interval (lazy regularisation, StyleGAN2 §B).
* **D main**: ``softplus(D(aug(G(z)))) + softplus(-D(aug(x)))``; the real logits drive ADA's ``p`` towards the
  target sign rate 0.6 (StyleGAN2-ADA §2.3).
* **D reg** every ``r1_interval`` (16) D steps: R1 ``gamma / 2 * |grad_x D(aug(x))|^2`` times the interval.
* **EMA** of G after every G step, half-life ``ema_kimg`` thousand images (ramped up over the first
  ``ema_rampup`` of training: StyleGAN2-ADA), the generator that is logged, projected and used downstream.

Adam for both networks: betas (0, 0.99) and lr ``lr`` (StyleGAN2's 0.002, ADA's 0.0025), each corrected for lazy
regularisation by ``c = interval / (interval + 1)``: ``lr * c``, ``betas ** c`` (StyleGAN2 §B). Every step goes
through :class:`facelab.training.GuardedStep` (a non-finite loss or gradient skips the step, with a WARNING).

Progress is in kimg (thousands of real maps shown to D, counted over all DDP ranks): ``total_kimg`` stops the run,
``log_every_kimg`` logs scalars (losses, R1, path length, ADA p; synchronised over ranks) and
``snapshot_every_kimg`` writes the image grids (rank 0): colour-mapped generated maps (EMA generator, fixed z)
and the bilinear mean face bump-shaded with them.

Maps are (B, 1, S, S) in the FaceScape encoding ``(v - 32768) / 32768`` (values in [-1, 1]; 0.914 mm per unit).
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from torch import Tensor

from dnpm.detailed3dmm import (
    FACESCAPE_MM_PER_UNIT,
    bilinear_model,
    colorize_displacement,
    render_meshes,
    synthesize,
)
from facelab.log import get_logger
from facelab.losses import r1_penalty
from facelab.nn.ada import AdaptiveAugment
from facelab.nn.stylegan2 import (
    Discriminator,
    Generator,
    KimgCounter,
    PathLengthRegularizer,
    ema_beta,
    lazy_optimizer_params,
    style_mix,
    update_ema,
)
from facelab.render import MeshRenderer
from facelab.training import GuardedStep, tensorboard_writer
from facelab.viz import rows_grid

__all__ = ["DnpmModule", "maps_of_batch"]

log = get_logger(__name__)


def maps_of_batch(batch) -> tuple[Tensor, float]:
    """The (B, C, S, S) maps of a batch and millimetres per unit of them: a :class:`facelab.data.detail_maps.
    DisplacementBatch` (``map``, ``scale_mm``), a mapping with ``"map"`` (and ``"scale_mm"``), or a bare tensor (in
    the FaceScape encoding, 0.914 mm per unit)."""
    if isinstance(batch, Tensor):
        maps, scale = batch, FACESCAPE_MM_PER_UNIT
    elif isinstance(batch, dict):
        maps, scale = batch.get("map"), batch.get("scale_mm", FACESCAPE_MM_PER_UNIT)
    else:
        maps, scale = getattr(batch, "map", None), getattr(batch, "scale_mm", FACESCAPE_MM_PER_UNIT)
    if not isinstance(maps, Tensor) or maps.dim() != 4:
        raise ValueError(f"expected (B, C, S, S) displacement maps in the batch, got {type(batch).__name__}")
    return maps, float(scale)


class DnpmModule(LightningModule):
    """The DNPM GAN: a float, channel-agnostic StyleGAN2 over displacement maps (paper Eq. 1).

    Args:
        resolution: map side ``S`` (a power of two, 32..1024; the paper's 1024).
        channels: map channels (1 for displacement).
        z_dim, w_dim: latent sizes (512).
        mapping_layers: mapping-network depth (8).
        channel_base, channel_max: feature maps per resolution, ``min(channel_base / res, channel_max)``
            (StyleGAN2: 32768 and 512 at 1024^2); both networks.
        mapping_lr_multiplier: the mapping network's learning-rate multiplier (0.01).
        mbstd_group: the discriminator's minibatch-std group (4).
        lr: Adam learning rate of both networks before the lazy-regularisation correction (ADA's 0.0025).
        betas: Adam betas (0, 0.99).
        r1_gamma: R1 weight ``gamma`` (StyleGAN2: 10 generic, 2 at 1024^2 "paper1024"; 0 disables).
        r1_interval: D steps between R1 evaluations (16).
        pl_weight: path-length weight (2; 0 disables).
        pl_interval: G steps between path-length evaluations (4).
        pl_decay: decay of the running path length ``a`` (0.01).
        pl_batch_shrink: the path-length batch is ``B / pl_batch_shrink`` (2).
        style_mixing: probability of mixing two latents (0.9).
        ema_kimg: half-life of the EMA generator in thousands of images (10).
        ema_rampup: the EMA half-life grows as ``ema_rampup * kimg`` until ``ema_kimg`` (0.05; None: no ramp).
        ada_target: ADA's target ``r_t = E[sign(D(x))]`` (0.6; None disables augmentation).
        ada_kimg: kimg for ADA's ``p`` to go 0 -> 1 (500).
        ada_interval: batches between ADA adjustments (4).
        total_kimg: stop after this many thousand real maps (the paper: ~15000 kimg at 1024^2).
        log_every_kimg: kimg between scalar logs (StyleGAN2's "tick").
        snapshot_every_kimg: kimg between image grids.
        grid_size: samples in the image grids (fixed z, EMA generator).
        render_size: side of the rendered mean-face images (0: no mesh renders).
        model_path: the bilinear model whose mean face is rendered with the maps (``"synthetic"``: stand-in).
        mm_per_unit: millimetres per map unit until a batch says otherwise (its ``scale_mm``); kept in the
            checkpoint as ``map_scale_mm`` (Detailed3DMM's ``s``).
    """

    def __init__(
        self,
        resolution: int = 32,
        channels: int = 1,
        z_dim: int = 512,
        w_dim: int = 512,
        mapping_layers: int = 8,
        channel_base: int = 32768,
        channel_max: int = 512,
        mapping_lr_multiplier: float = 0.01,
        mbstd_group: int = 4,
        lr: float = 0.0025,
        betas: tuple[float, float] = (0.0, 0.99),
        r1_gamma: float = 10.0,
        r1_interval: int = 16,
        pl_weight: float = 2.0,
        pl_interval: int = 4,
        pl_decay: float = 0.01,
        pl_batch_shrink: int = 2,
        style_mixing: float = 0.9,
        ema_kimg: float = 10.0,
        ema_rampup: float | None = 0.05,
        ada_target: float | None = 0.6,
        ada_kimg: float = 500.0,
        ada_interval: int = 4,
        total_kimg: float = 25000.0,
        log_every_kimg: float = 4.0,
        snapshot_every_kimg: float = 50.0,
        grid_size: int = 8,
        render_size: int = 128,
        model_path: str = "synthetic",
        mm_per_unit: float = FACESCAPE_MM_PER_UNIT,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.generator = Generator(resolution=resolution, channels=channels, z_dim=z_dim, w_dim=w_dim,
                                   mapping_layers=mapping_layers, channel_base=channel_base, channel_max=channel_max,
                                   mapping_lr_multiplier=mapping_lr_multiplier)
        self.discriminator = Discriminator(resolution=resolution, channels=channels, channel_base=channel_base,
                                           channel_max=channel_max, mbstd_group_size=mbstd_group)
        self.generator_ema = copy.deepcopy(self.generator).requires_grad_(False).eval()
        self.path_length = PathLengthRegularizer(weight=pl_weight, interval=pl_interval, decay=pl_decay,
                                                 batch_shrink=pl_batch_shrink)
        self.augment = None if ada_target is None else AdaptiveAugment(target=ada_target, ada_kimg=ada_kimg,
                                                                        interval=ada_interval)
        self.progress = KimgCounter()
        self.resolution, self.z_dim = int(resolution), int(z_dim)
        self.guard = GuardedStep.for_lightning(self, name="DNPM")
        self.register_buffer("d_steps", torch.zeros((), dtype=torch.long))
        self.register_buffer("map_scale_mm", torch.tensor(float(mm_per_unit), dtype=torch.float64))
        self.register_buffer("grid_z", torch.randn(grid_size, z_dim, generator=torch.Generator().manual_seed(123)),
                             persistent=False)
        self._renderer: MeshRenderer | None = None
        self._mean_face: Tensor | None = None
        self._since_log: dict[str, list[Tensor]] = {}

    # ------------------------------------------------------------------------------------------------ setup
    def configure_optimizers(self):
        h = self.hparams
        g_lr, g_betas = lazy_optimizer_params(h.lr, tuple(h.betas), h.pl_interval if h.pl_weight > 0 else 1)
        d_lr, d_betas = lazy_optimizer_params(h.lr, tuple(h.betas), h.r1_interval if h.r1_gamma > 0 else 1)
        opt_g = torch.optim.Adam(self.generator.parameters(), lr=g_lr, betas=g_betas, eps=1e-8)
        opt_d = torch.optim.Adam(self.discriminator.parameters(), lr=d_lr, betas=d_betas, eps=1e-8)
        return [opt_g, opt_d]

    def on_train_start(self) -> None:
        self.generator_ema.eval()

    # ----------------------------------------------------------------------------------------------- pieces
    def _world(self) -> int:
        return int(self.trainer.world_size) if self._trainer is not None else 1

    def sample_latents(self, batch_size: int, update_w_avg: bool = False) -> Tensor:
        """(B, N, D) w+ codes of fresh z, style-mixed with a second z at probability ``style_mixing``."""
        z = torch.randn(batch_size, self.z_dim, device=self.device)
        ws = self.generator.mapping(z, update_w_avg=update_w_avg)
        if self.hparams.style_mixing > 0:
            other = self.generator.mapping(torch.randn_like(z))
            ws = style_mix(ws, other, prob=self.hparams.style_mixing)
        return ws

    def _d(self, x: Tensor) -> Tensor:
        """(B,) D logits of ADA-augmented maps."""
        return self.discriminator(x if self.augment is None else self.augment(x))

    def generator_losses(self, batch_size: int) -> dict[str, Tensor]:
        """``{"g_adv": softplus(-D(aug(G(z))))}`` (the non-saturating loss); tracks ``w_avg``."""
        fake = self.generator.synthesis(self.sample_latents(batch_size, update_w_avg=True))
        return {"g_adv": F.softplus(-self._d(fake)).mean()}

    def path_length_losses(self, batch_size: int) -> dict[str, Tensor]:
        """``{"path_length": weight * interval * (|J_w^T y| - a)^2}`` on ``B / pl_batch_shrink`` samples
        (StyleGAN2 §3.2 Eq. 4, lazy)."""
        ws = self.sample_latents(self.path_length.batch_size(batch_size))
        return {"path_length": self.path_length(self.generator.synthesis(ws), ws)}

    def discriminator_losses(self, real: Tensor) -> tuple[dict[str, Tensor], Tensor]:
        """``{"d_fake": softplus(D(aug(G(z)))), "d_real": softplus(-D(aug(x)))}`` and the real logits (for ADA)."""
        with torch.no_grad():
            fake = self.generator.synthesis(self.sample_latents(real.shape[0]))
        real_logits = self._d(real)
        losses = {"d_fake": F.softplus(self._d(fake)).mean(), "d_real": F.softplus(-real_logits).mean()}
        return losses, real_logits.detach()

    def r1_losses(self, real: Tensor) -> dict[str, Tensor]:
        """``{"r1": |grad_x D(aug(x))|^2}`` (batch mean; its weight is ``gamma / 2 * r1_interval``)."""
        x = real.detach().requires_grad_(True)
        return {"r1": r1_penalty(self._d(x), x)}

    # -------------------------------------------------------------------------------------------- training
    def training_step(self, batch, batch_idx: int) -> None:
        real, scale_mm = maps_of_batch(batch)
        real = real.to(self.dtype)
        self._record_scale(scale_mm)
        if tuple(real.shape[1:]) != (self.hparams.channels, self.resolution, self.resolution):
            raise ValueError(f"DNPM was built for ({self.hparams.channels}, {self.resolution}, {self.resolution}) maps "
                             f"(model.init_args.resolution / channels) but the batch has {tuple(real.shape[1:])}: "
                             "set the data resolution alike")
        h = self.hparams
        opt_g, opt_d = self.optimizers()
        world_batch = real.shape[0] * self._world()
        logs: dict[str, Tensor] = {}

        self.toggle_optimizer(opt_g)  # D frozen while G steps
        try:
            losses = self.generator_losses(real.shape[0])
            logs.update(losses)
            self.guard(opt_g, losses, {"g_adv": 1.0})
            if self.path_length.due:
                losses = self.path_length_losses(real.shape[0])
                logs.update(losses)
                logs["pl_mean"] = self.path_length.pl_mean.detach().clone()
                self.guard(opt_g, losses, {"path_length": 1.0})  # weight * interval inside
            else:
                self.path_length.step()
        finally:
            self.untoggle_optimizer(opt_g)
        beta = ema_beta(world_batch, h.ema_kimg, h.ema_rampup, int(self.progress.nimg))
        update_ema(self.generator_ema, self.generator, beta)

        self.toggle_optimizer(opt_d)  # G frozen while D steps
        try:
            losses, real_logits = self.discriminator_losses(real)
            logs.update(losses)
            self.guard(opt_d, losses, {"d_fake": 1.0, "d_real": 1.0})
            if h.r1_gamma > 0 and int(self.d_steps) % h.r1_interval == 0:
                losses = self.r1_losses(real)
                logs.update(losses)
                self.guard(opt_d, losses, {"r1": 0.5 * h.r1_gamma * h.r1_interval})  # lazy R1
        finally:
            self.untoggle_optimizer(opt_d)
        self.d_steps += 1
        if self.augment is not None:
            self.augment.update(real_logits)
            logs["ada_p"] = torch.as_tensor(float(self.augment.p))
        logs["real_sign"] = real_logits.sign().mean()
        self._progress(world_batch, logs)

    def _record_scale(self, scale_mm: float) -> None:
        """Keep the data's millimetres per map unit in the checkpoint (Detailed3DMM's ``s``, Eq. 4)."""
        if not math.isclose(float(self.map_scale_mm), scale_mm, rel_tol=1e-6):
            if self.progress.nimg > 0:
                raise ValueError(f"the maps' scale changed during training: {float(self.map_scale_mm)} mm per unit "
                                 f"before, {scale_mm} now")
            self.map_scale_mm.fill_(scale_mm)

    def _progress(self, world_batch: int, logs: dict[str, Tensor]) -> None:
        """Count kimg; log the scalars averaged since the last log every ``log_every_kimg`` (synchronised over
        ranks), the image grids every ``snapshot_every_kimg`` (rank 0); stop at ``total_kimg``."""
        h = self.hparams
        first = int(self.progress.nimg) == 0
        kimg = self.progress.advance(world_batch)
        for name, value in logs.items():
            self._since_log.setdefault(name, []).append(value.detach().float().reshape(()).to(self.device))
        done = kimg >= h.total_kimg
        if first or done or (h.log_every_kimg > 0 and self.progress.crossed(h.log_every_kimg)):
            for name, values in self._since_log.items():
                self.log(f"train/{name}", torch.stack(values).mean(), on_step=True, on_epoch=False, sync_dist=True,
                         batch_size=1)
            self.log("progress/kimg", float(kimg), on_step=True, on_epoch=False, rank_zero_only=True, batch_size=1)
            self._since_log = {}
        if first or done or (h.snapshot_every_kimg > 0 and self.progress.crossed(h.snapshot_every_kimg)):
            self.log_images()
        if done and self._trainer is not None:
            self.trainer.should_stop = True

    # ------------------------------------------------------------------------------------------------ images
    def _render_setup(self) -> tuple[MeshRenderer, Tensor]:
        if self._renderer is None:
            bilinear = bilinear_model(self.hparams.model_path)
            with torch.no_grad():
                mean = bilinear(bilinear.neutral_params(1)).verts
            front = bilinear.region_faces("front") if "front" in bilinear.regions else None
            self._renderer = MeshRenderer(bilinear.faces, self.hparams.render_size, uv=bilinear.uv,
                                          faces_uv=bilinear.faces_uv, face_subset=front)
            self._mean_face = mean
        return self._renderer.to(self.device), self._mean_face.to(self.device)

    @torch.no_grad()
    def log_images(self) -> None:
        """Rank 0: the EMA generator's maps of the fixed grid latents (colour-mapped) and the mean face bump-shaded
        with each (TensorBoard ``images/maps``)."""
        writer = tensorboard_writer(self.logger, self.global_rank)
        if writer is None:
            return
        ws = self.generator_ema.mapping(self.grid_z.to(self.device))
        maps = synthesize(self.generator_ema, ws).float()
        panels = [colorize_displacement(maps[:, :1])]
        if self.hparams.render_size > 0:
            renderer, mean = self._render_setup()
            verts = mean.expand(maps.shape[0], -1, -1)
            panels.append(render_meshes(renderer, verts, float(self.map_scale_mm) * maps[:, :1]))
        side = max(p.shape[-1] for p in panels)
        panels = [F.interpolate(p, size=(side, side), mode="nearest") for p in panels]
        writer.add_image("images/maps", rows_grid(*[p.cpu() for p in panels], max_images=maps.shape[0]),
                         int(self.progress.nimg))
