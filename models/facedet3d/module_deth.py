"""``DetHModule``: FaceDet3D's detail-hallucination recipe (paper §3.2.1, Eq. 2-7) as a LightningModule.

Per batch of :class:`facedet3d.data.DetailPairBatch` (manual optimisation, one D_Exp step then one DetH step):

* target AUs ``y``: with probability ``pair_fraction`` (where the pair is the same person) the pair's target frame
  (the weak supervision of §3.2.1: its true map ``D(I_y)`` is known), otherwise GANimation's random target:
  another sample's AUs + U(-0.1, 0.1), clipped to [0, 1];
* D_Exp: non-saturating loss on the global and per-texel logits of real maps ``D(I_x)`` vs hallucinated ones,
  the AU loss on real maps (Eq. 6), lazy R1 on real maps (``r1_gamma``, every ``r1_interval`` D steps);
* DetH: non-saturating adversarial loss, the AU loss of the hallucination (Eq. 7), GANimation's cycle loss
  (``DetH(DetH(D, x -> y), y -> x) ≈ D``, L1), mask mean and mask total variation, and the weak supervision
  ``L1(D~(I_y), D(I_y))`` on same-identity pairs.

All weights are :class:`DetHLossWeights` (YAML ``model.init_args.loss_weights``). Maps are millimetres; L1 terms are
masked means over the valid texels. Validation measures the hallucinated map against the *true* target map
beside the "copy the input" and "zero" answers, and D_Exp's AU error on real held-out maps beside the mean-AU
answer.

The module also fits the AU -> BFM expression map that gives the target geometry at inference
(:mod:`facedet3d.expression`) on its training faces and stores it in the checkpoint.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from functools import partial

import torch
from lightning.pytorch import LightningModule
from torch import Tensor

from facedet3d.data import DetailPairBatch, FaceDetailBatch
from facedet3d.expression import AUExpressionMap
from facedet3d.networks import DetH, DetHOutput, ExpressionDiscriminator, FaceFeatures
from facelab.io.weights import load_state_dict_strict, read_checkpoint
from facelab.losses import discriminator_loss, generator_loss, total_variation
from facelab.losses.adversarial import LazyR1
from facelab.training import GuardedStep, ImageGridLogger, tensorboard_writer

__all__ = ["DetHLossWeights", "DetHModule", "au_bars", "detail_image", "load_deth", "masked_l1",
           "random_target_aus"]

EXPRESSION_MAP_KEY = "facedet3d_au_expression_map"  # checkpoint entry of the AU -> expression map


@dataclass
class DetHLossWeights:
    """Weights of DetH's and D_Exp's terms (GANimation's: cycle 10, mask 0.1, mask TV 1e-5).

    Attributes:
        adversarial: DetH's non-saturating loss (global + per-texel logits).
        au_fake: Eq. 7, ``||D_Exp^AU(D~(I_y)) - y||^2``.
        cycle: L1 of the cycle back to ``x``.
        mask_mean: mean of the mask (keeps unchanged details from the input, GANimation's attention loss).
        mask_tv: total variation of the mask.
        weak: L1 to the true target map on same-identity pairs (§3.2.1's weak supervision).
        discriminator: D_Exp's non-saturating loss.
        au_real: Eq. 6, ``||D_Exp^AU(D(I_x)) - x||^2``.
    """

    adversarial: float = 1.0
    au_fake: float = 1.0
    cycle: float = 10.0
    mask_mean: float = 0.1
    mask_tv: float = 1e-5
    weak: float = 10.0
    discriminator: float = 1.0
    au_real: float = 1.0


def masked_l1(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Mean ``|pred - target|`` over the texels where ``mask`` (B, 1, S, S) is set (0 when none is)."""
    return ((pred - target).abs() * mask).sum() / mask.sum().clamp(min=1.0)


def random_target_aus(aus: Tensor, noise: float = 0.1, generator: torch.Generator | None = None) -> Tensor:
    """GANimation's random targets: the AUs of another sample of the batch (a random derangement) plus
    U(-noise, noise), clipped to [0, 1]. (B, 17) -> (B, 17)."""
    b = aus.shape[0]
    shift = int(torch.randint(1, b, (), generator=generator)) if b > 1 else 0
    other = aus.roll(shift, dims=0)
    jitter = (torch.rand(other.shape, generator=generator) * 2 - 1).to(aus) * noise
    return (other + jitter).clamp(0.0, 1.0)


def detail_image(detail: Tensor, scale_mm: float = 1.5) -> Tensor:
    """(B, 1, S, S) mm -> (B, 3, S, S) grey in [0, 1] (0.5 = flat; black = ``-scale_mm`` groove)."""
    return (0.5 + detail / (2 * scale_mm)).clamp(0, 1).expand(-1, 3, -1, -1)


def au_bars(aus: Tensor, size: int) -> Tensor:
    """(B, 17) AUs in [0, 1] -> (B, 3, size, size) bar charts (one bar per AU, left to right)."""
    b, n = aus.shape
    rows = torch.arange(size, device=aus.device).flip(0)[None, :, None]  # height from the bottom
    cols = (torch.arange(size, device=aus.device) * n // size).clamp(max=n - 1)
    heights = (aus.clamp(0, 1) * size)[:, cols][:, None, :]  # (B, 1, size)
    return (rows < heights).float()[:, None].expand(-1, 3, -1, -1)


class DetHModule(LightningModule):
    """DetH + D_Exp trained adversarially with cycle, mask and weak-supervision terms (module docstring).

    Args:
        num_shape: size of ``alpha_s`` (80 for the synthetic BFM, 199 for BFM 2017).
        base_channels, max_channels, num_down, num_bottleneck, vector_channels, age_dim: :class:`DetH`'s settings.
        discriminator_channels: D_Exp's encoder widths (:class:`ExpressionDiscriminator`).
        spectral_norm: spectral normalisation in D_Exp's realism paths.
        max_displacement_mm: DetH's tanh head scale (mm).
        input_scale_mm: both networks see the maps divided by this (about the maps' standard deviation; see
            :class:`facedet3d.networks.ExpressionDiscriminator`).
        loss_weights: :class:`DetHLossWeights`.
        pair_fraction: share of same-identity samples that take the pair's target (weak supervision).
        target_au_noise: the U(-a, a) jitter of the random targets.
        lr, betas: Adam for both networks (GANimation: 1e-4, (0.5, 0.999)).
        r1_gamma, r1_interval: lazy R1 on D_Exp (StyleGAN2: gamma 10, every 16 D steps).
        facenet_weights, age_weights: the frozen FaceID / age networks, used when batches carry no precomputed
            features (:class:`facedet3d.networks.FaceFeatures`; missing: WARNING and random frozen networks).
        grad_clip: gradient-norm clip of both steps (0: none).
        log_images_every_n_steps: TensorBoard grids (input map, target AUs, hallucination, mask, output, truth).
        decoder_coords: :class:`DetH`'s UV coordinates at every decoder block (off: the paper's decoder).
        expression_ridge: ridge weight of the AU -> BFM expression map fitted on the training faces and stored in
            the checkpoint (:mod:`facedet3d.expression`; the target geometry ``alpha^_e`` of Eq. 3 at inference).
    """

    def __init__(self, num_shape: int = 80, base_channels: int = 64, max_channels: int = 256, num_down: int = 2,
                 num_bottleneck: int = 4, vector_channels: int = 32, age_dim: int = 64,
                 discriminator_channels: list[int] | None = None, spectral_norm: bool = True,
                 max_displacement_mm: float = 3.0, loss_weights: DetHLossWeights | None = None,
                 pair_fraction: float = 0.5, target_au_noise: float = 0.1, lr: float = 1e-4,
                 betas: tuple[float, float] = (0.5, 0.999), r1_gamma: float = 10.0, r1_interval: int = 16,
                 facenet_weights: str | None = None, age_weights: str | None = None, grad_clip: float = 0.0,
                 log_images_every_n_steps: int = 500, decoder_coords: bool = False,
                 input_scale_mm: float = 0.15, expression_ridge: float = 1e-3) -> None:
        super().__init__()
        if isinstance(loss_weights, dict):  # checkpoint hparams store it as a plain dict
            loss_weights = DetHLossWeights(**loss_weights)
        self.weights = loss_weights or DetHLossWeights()
        discriminator_channels = list(discriminator_channels or [64, 128, 256, 512, 512])
        self.save_hyperparameters(ignore=["loss_weights"])
        self.hparams["loss_weights"] = asdict(self.weights)
        self.hparams["discriminator_channels"] = discriminator_channels
        self.automatic_optimization = False
        self.deth = DetH(num_shape=num_shape, age_dim=age_dim, base_channels=base_channels,
                         max_channels=max_channels, num_down=num_down, num_bottleneck=num_bottleneck,
                         vector_channels=vector_channels, max_displacement_mm=max_displacement_mm,
                         decoder_coords=decoder_coords, input_scale_mm=input_scale_mm)
        self.discriminator = ExpressionDiscriminator(channels=discriminator_channels, spectral_norm=spectral_norm,
                                                     max_displacement_mm=max_displacement_mm,
                                                     input_scale_mm=input_scale_mm)
        self.r1 = LazyR1(gamma=r1_gamma, interval=r1_interval)
        self.register_buffer("au_mean", torch.zeros(17))
        self.register_buffer("au_count", torch.zeros(()))
        self.expression_map = AUExpressionMap(ridge=expression_ridge)
        self.features: FaceFeatures | None = None
        self.image_grid = ImageGridLogger(log_images_every_n_steps, max_images=6)
        self.guard_d = GuardedStep.for_lightning(self, name="DetHModule/D_Exp")
        self.guard_g = GuardedStep.for_lightning(self, name="DetHModule/DetH")

    # ------------------------------------------------------------------------------------------------ pieces
    def configure_optimizers(self):
        hp = self.hparams
        c = self.r1.optimizer_ratio()  # StyleGAN2's lazy-regularisation correction of D's lr and betas
        opt_g = torch.optim.Adam(self.deth.parameters(), lr=hp.lr, betas=tuple(hp.betas))
        opt_d = torch.optim.Adam(self.discriminator.parameters(), lr=hp.lr * c,
                                 betas=tuple(b ** c for b in hp.betas))
        return [opt_g, opt_d]

    def identity_features(self, face: FaceDetailBatch) -> tuple[Tensor, Tensor]:
        """FaceID and age features of the faces (precomputed by the data, or by the frozen networks here)."""
        if face.face_id is not None and face.age is not None:
            return face.face_id, face.age
        if self.features is None:
            self.features = FaceFeatures(self.hparams.facenet_weights, self.hparams.age_weights,
                                         age_feature_dim=self.hparams.age_dim).to(face.image.device)
        return self.features(face.image)

    def hallucinate(self, face: FaceDetailBatch, target_aus: Tensor, detail: Tensor | None = None,
                    source_aus: Tensor | None = None, features: tuple[Tensor, Tensor] | None = None) -> DetHOutput:
        """Eq. 2 for ``face`` (its map, AUs, shape, FaceID, age) toward ``target_aus`` (B, 17)."""
        face_id, age = features if features is not None else self.identity_features(face)
        return self.deth(face.detail if detail is None else detail, face.detail_mask,
                         face.action_units if source_aus is None else source_aus, target_aus, face.shape, face_id,
                         age)

    def choose_targets(self, batch: DetailPairBatch) -> tuple[Tensor, Tensor]:
        """(target AUs (B, 17), which samples use the pair's target (B,) bool)."""
        x = batch.source.action_units
        y = random_target_aus(x, self.hparams.target_au_noise)
        pick = torch.rand(x.shape[0]) < self.hparams.pair_fraction
        use_pair = pick.to(x.device) & batch.same_identity.bool()
        return torch.where(use_pair[:, None], batch.target.action_units, y), use_pair

    def discriminator_losses(self, real: Tensor, real_aus: Tensor, fake: Tensor) -> dict[str, Tensor]:
        d_real, d_fake = self.discriminator(real), self.discriminator(fake.detach())
        return {
            "discriminator": discriminator_loss([d_real.global_logit, d_real.pixel_logits],
                                                [d_fake.global_logit, d_fake.pixel_logits]),
            "au_real": (d_real.heads["au"] - real_aus).square().sum(1).mean(),  # Eq. 6
            # R1 on the map in the network's units (real / input_scale_mm), where StyleGAN2's gamma is meant: on
            # millimetres the penalty would be input_scale_mm^-2 (~44x) stronger and flatten D_Exp (its AU head too)
            "r1": self.r1(self._logits_of_scaled, real / self.discriminator.input_scale_mm),
        }

    def _logits_of_scaled(self, scaled: Tensor) -> list[Tensor]:
        return self.discriminator.logits(scaled * self.discriminator.input_scale_mm)

    def generator_losses(self, batch: DetailPairBatch, y: Tensor, use_pair: Tensor,
                         features: tuple[Tensor, Tensor]) -> tuple[dict[str, Tensor], DetHOutput]:
        src, mask = batch.source, batch.source.detail_mask
        out = self.hallucinate(src, y, features=features)
        d_fake = self.discriminator(out.detail)
        back = self.hallucinate(src, src.action_units, detail=out.detail, source_aus=y, features=features)
        pair_mask = mask * use_pair.float()[:, None, None, None]
        losses = {
            "adversarial": generator_loss([d_fake.global_logit, d_fake.pixel_logits]),
            "au_fake": (d_fake.heads["au"] - y).square().sum(1).mean(),  # Eq. 7
            "cycle": masked_l1(back.detail, src.detail, mask),
            "mask_mean": (out.mask * mask).sum() / mask.sum().clamp(min=1.0),
            "mask_tv": total_variation(out.mask),
            "weak": masked_l1(out.detail, batch.target.detail, pair_mask),
        }
        return losses, out

    # ------------------------------------------------------------------------------------------------ steps
    def training_step(self, batch: DetailPairBatch, batch_idx: int) -> None:
        opt_g, opt_d = self.optimizers()
        src = batch.source
        features = self.identity_features(src)
        y, use_pair = self.choose_targets(batch)
        self._update_au_mean(src.action_units)
        self._update_expression_map(batch)
        with torch.no_grad():
            fake = self.hallucinate(src, y, features=features).detail
        self.toggle_optimizer(opt_d)
        d_losses = self.discriminator_losses(src.detail, src.action_units, fake)
        d_weights = {"discriminator": self.weights.discriminator, "au_real": self.weights.au_real, "r1": 1.0}
        self.guard_d(opt_d, d_losses, d_weights, clip=self.hparams.grad_clip)
        self.untoggle_optimizer(opt_d)
        self.toggle_optimizer(opt_g)
        g_losses, out = self.generator_losses(batch, y, use_pair, features)
        self.guard_g(opt_g, g_losses, asdict(self.weights), clip=self.hparams.grad_clip)
        self.untoggle_optimizer(opt_g)
        b = src.detail.shape[0]
        for name, value in {**d_losses, **g_losses}.items():
            if name == "r1" and value.detach().abs().sum() == 0:
                continue  # lazy R1: only the due steps are logged
            self.log(f"train/loss_{name}", value.detach(), on_step=True, on_epoch=False, batch_size=b)
        self.log("train/pair_share", use_pair.float().mean(), on_step=True, on_epoch=False, batch_size=b)
        self._log_images(batch, y, out, batch_idx)

    def _update_au_mean(self, aus: Tensor) -> None:
        """Running mean of the training AUs (the mean-AU baseline of the validation AU error)."""
        n = aus.shape[0]
        total = self.au_count + n
        self.au_mean.mul_(self.au_count / total).add_(aus.detach().sum(0) / total)
        self.au_count.fill_(float(total))

    def _update_expression_map(self, batch: DetailPairBatch) -> None:
        """Both faces of every pair are training faces with AUs and a BFM expression (:mod:`facedet3d.expression`);
        the statistics are summed over DDP ranks so every rank (and the checkpoint) holds the same fit."""
        aus = torch.cat([batch.source.action_units, batch.target.action_units])
        exp = torch.cat([batch.source.expression, batch.target.expression])
        reduce = None
        if self._trainer is not None and self.trainer.world_size > 1:
            reduce = partial(self.trainer.strategy.reduce, reduce_op="sum")
        self.expression_map.update(aus, exp, reduce=reduce)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint[EXPRESSION_MAP_KEY] = self.expression_map.state_dict()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.expression_map = AUExpressionMap.from_state_dict(checkpoint.get(EXPRESSION_MAP_KEY))

    def _log_images(self, batch: DetailPairBatch, y: Tensor, out: DetHOutput, batch_idx: int) -> None:
        writer = tensorboard_writer(self.logger, self.global_rank)
        if not self.image_grid.due(batch_idx, writer):
            return
        s = batch.source.detail.shape[-1]
        scale = self.hparams.max_displacement_mm / 2
        panels = [detail_image(batch.source.detail, scale), au_bars(y, s), detail_image(out.hallucination, scale),
                  out.mask.expand(-1, 3, -1, -1), detail_image(out.detail, scale),
                  detail_image(batch.target.detail, scale)]
        self.image_grid.log(writer, "train/input_targetAU_hallucination_mask_output_pairtruth",
                            [p.detach() for p in panels], self.global_step)

    @torch.no_grad()
    def evaluate_pairs(self, batch: DetailPairBatch) -> dict[str, Tensor]:
        """Errors toward the *true* target maps of same-identity pairs (mm) with their baselines, and D_Exp's AU
        MAE on the real target maps with the mean-AU baseline; once the AU -> expression map has seen training
        faces, the mean squared error of the target BFM expression it gives (Eq. 3's ``alpha^_e``) beside the
        copy-the-input answer, on the same-identity pairs."""
        src, tgt = batch.source, batch.target
        mask = src.detail_mask * tgt.detail_mask * batch.same_identity.float()[:, None, None, None]
        out = self.hallucinate(src, tgt.action_units)
        au = self.discriminator(tgt.detail).heads["au"]
        extra = {}
        if self.expression_map.fitted:  # the same keys on every rank (validation syncs them)
            fit, same = self.expression_map, batch.same_identity.float()

            def mse(pred: Tensor) -> Tensor:  # mean over the same-identity pairs (0 when there is none)
                return ((pred - tgt.expression).square().mean(1) * same).sum() / same.sum().clamp(min=1.0)

            extra = {"expression_mse": mse(fit.target_expression(src.expression, src.action_units, tgt.action_units)),
                     "expression_mse_keep_residual": mse(fit.target_expression(
                         src.expression, src.action_units, tgt.action_units, keep_residual=True)),
                     "expression_mse_copy_input": mse(src.expression),
                     "expression_mse_mean": mse(fit.mean_expression().to(tgt.expression)[None])}
        return {
            "detail_l1": masked_l1(out.detail, tgt.detail, mask),
            "detail_l1_copy_input": masked_l1(src.detail, tgt.detail, mask),
            "detail_l1_zero": masked_l1(torch.zeros_like(tgt.detail), tgt.detail, mask),
            "au_mae": (au - tgt.action_units).abs().mean(),
            "au_mae_mean_baseline": (self.au_mean[None] - tgt.action_units).abs().mean(),
            **extra,
        }

    def validation_step(self, batch: DetailPairBatch, batch_idx: int) -> None:
        for name, value in self.evaluate_pairs(batch).items():
            self.log(f"val/{name}", value, on_step=False, on_epoch=True, sync_dist=True,
                     batch_size=batch.batch_size)


def load_deth(path: str | os.PathLike, device: str | torch.device = "cpu", with_expression_map: bool = False
              ) -> tuple[DetH, ExpressionDiscriminator] | tuple[DetH, ExpressionDiscriminator, AUExpressionMap]:
    """DetH and D_Exp of a ``DetHModule`` checkpoint (``torch.load(weights_only=True)``), in eval mode, and with
    ``with_expression_map`` its AU -> BFM expression map (unfitted for checkpoints from before it existed).

    Raises:
        facelab.errors.MissingAssetError / AssetFormatError: no such file, not a DetHModule checkpoint.
    """
    ckpt = read_checkpoint(path, what="DetH checkpoint (configs/facedet3d_deth.yaml)", config_key="--deth")
    hp = dict(ckpt.get("hyper_parameters", {}))
    keep = ("num_shape", "base_channels", "max_channels", "num_down", "num_bottleneck", "vector_channels", "age_dim",
            "max_displacement_mm", "decoder_coords")
    input_scale = hp.get("input_scale_mm")  # absent: a checkpoint from before the option (maps / max_displacement)
    deth = DetH(**{k: hp[k] for k in keep if k in hp}, input_scale_mm=input_scale)
    disc = ExpressionDiscriminator(channels=hp.get("discriminator_channels", [64, 128, 256, 512, 512]),
                                   spectral_norm=hp.get("spectral_norm", True),
                                   max_displacement_mm=hp.get("max_displacement_mm", 3.0), input_scale_mm=input_scale)
    state = ckpt.get("state_dict", {})
    for prefix, net in (("deth.", deth), ("discriminator.", disc)):
        load_state_dict_strict(net, {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}, path,
                               hint="a DetHModule checkpoint")
    if with_expression_map:
        return deth.to(device).eval(), disc.to(device).eval(), AUExpressionMap.from_state_dict(
            ckpt.get(EXPRESSION_MAP_KEY))
    return deth.to(device).eval(), disc.to(device).eval()


