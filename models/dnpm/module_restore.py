"""Detailed reconstruction from a degraded image (DNPM paper §IV-B, Eq. 11-15): the two trained stages.

:class:`RegressorModule` (``configs/dnpm_regressor.yaml``): the image -> UV displacement regressor (pix2pixHD's
global generator, :class:`dnpm.restore_networks.GlobalGenerator`; the paper uses one trained on FaceScape's images),
here trained on renders of the synthetic world's bilinear faces whose shading shows their true UV maps
(:class:`dnpm.restore_data.FaceRenderer`)::

    L_reg = pixel || R(x) - I ||_1  +  perceptual LPIPS-VGG(R(x), I)
            + adversarial L_GAN(R, D)  +  feature_matching L_FM(R, D)

pix2pixHD's objective (Wang et al. 2018, Eq. 5: its GAN, feature-matching and VGG terms, plus the L1 a regression
to known maps affords): ``D`` is its multi-scale PatchGAN (:class:`facelab.nn.MultiscaleDiscriminator`,
``num_d`` scales, instance norm) on ``[x resized to the map, map]``, the GAN loss LSGAN (``gan_kind``), ``L_FM``
the L1 between D's intermediate features of the true and the predicted map (Eq. 4,
:func:`facelab.losses.feature_matching_loss`); weights pixel 1, perceptual 0.1, adversarial 1, feature matching
10 (pix2pixHD's lambda); ``adversarial: 0`` and ``feature_matching: 0`` drop D (a plain L1 + LPIPS regressor).
G and D step in turn (manual optimisation, guarded against non-finite losses); under DDP use
``--trainer.strategy=ddp_find_unused_parameters_true`` (D is frozen in G's step).
``x`` is the clean render, or with probability ``degrade_prob`` its degraded copy (default 0: clean renders only,
as a regressor built on FaceScape's images).

:class:`RestoreModule` (``configs/dnpm_restore.yaml``): E_deg, the pSp gradual-style encoder
(:class:`dnpm.restore_networks.GradualStyleEncoder`) through the frozen DNPM generator::

    I_gen  = G(E_deg(I_low) + w_mean)                                          (Eq. 11)
    L_pix  = || I_gen - I_high ||_1                                            (Eq. 12)
    L_lpips = || F(I_gen) - F(I_high) ||_2      (LPIPS on VGG16)               (Eq. 13)
    L_id   = sum_{i=1..5} (1 - cos(R_i(I_gen), R_i(I_high)))   (ArcFace)       (Eq. 14)
    L_deg  = lambda_1 L_pix + lambda_2 L_lpips + lambda_3 L_id,  (10, 0.2, 0.1)  (Eq. 15)

The plain-pSp baseline of Tables II / III (``configs/dnpm_restore_psp.yaml``) trains the same encoder with pSp's own
objective (Richardson et al. 2021; their ``training/coach.py`` and README): ``l2`` (pixel MSE), LPIPS on AlexNet
(``lpips_net: alex``), the identity term on ArcFace's final embedding (``identity_features: embedding``) and
optionally pSp's ``w_norm`` regulariser ``||E(I_low)||_2`` (the distance of the code from ``w_mean``).

``input: maps`` (Table II): ``I_low`` is the high-quality map degraded on the fly (``degradation``: x1/4 or x1/8
area downsampling, bicubic back up). ``input: photos`` (Table III): ``I_low`` is the frozen regressor's output on the
degraded render of the map's face (``regressor_ckpt``: a RegressorModule checkpoint; its render and degradation
settings are the ones used). Table IV's ablations: a loss weight 0 drops that term (``w/o L_id``:
``--model.init_args.loss_weights.identity=0``, ...).

Pretrained networks, local weights only, each with a console WARNING naming its key when absent:
``init_ckpt`` (the DNPM generator; refused without it unless ``allow_random_init``), ``lpips_weights``
(torchvision's ``vgg16-397923af.pth``), ``arcface_weights`` (insightface ``arcface_torch``'s IResNet
``backbone.pth``; without it L_id runs on a frozen random IResNet: it measures little), ``trunk_weights``
(optional ArcFace initialisation of E_deg's trunk, as pSp does).

Optimiser: Adam (pSp uses Ranger) at ``lr`` 1e-4, constant. Validation logs PSNR / SSIM of ``I_gen`` and of the
input ``I_low`` (the bicubic or regressor baseline) against ``I_high``, synchronised over ranks, with the data range of
the FaceScape encoding (2) in the generator's units, as Table I-IV.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from torch import Tensor, nn

from dnpm.detailed3dmm import FACESCAPE_MM_PER_UNIT, bilinear_model, colorize_displacement, map_lpips
from dnpm.module import maps_of_batch
from dnpm.module_detailed3dmm import load_generator
from dnpm.restore_data import Degradation, FaceRenderer
from dnpm.restore_networks import GlobalGenerator, GradualStyleEncoder, restore
from facelab.errors import AssetFormatError
from facelab.io.weights import constructor_arguments, read_checkpoint
from facelab.log import get_logger, warn_missing_weights
from facelab.losses import (
    ARCFACE_LEVELS,
    LPIPS,
    GanLossKind,
    IdentityLoss,
    discriminator_loss,
    feature_matching_loss,
    generator_loss,
)
from facelab.metrics import psnr, ssim
from facelab.nn import MultiscaleDiscriminator
from facelab.nn.stylegan2 import CheckpointMismatchError, Generator
from facelab.training import GuardedStep, tensorboard_writer
from facelab.viz import rows_grid

__all__ = [
    "RegressorLossWeights",
    "RegressorModule",
    "RestoreLossWeights",
    "RestoreModule",
    "load_regressor",
    "load_restorer",
    "map_identity_loss",
    "map_to_unit",
    "restore_scores",
]

log = get_logger(__name__)

RestoreInput = Literal["maps", "photos"]


@dataclass
class RestoreLossWeights:
    """Eq. 15's lambdas (a 0 drops the term: Table IV's ablations).

    Attributes:
        pixel: lambda_1, the L1 term (Eq. 12).
        lpips: lambda_2, LPIPS on VGG16 (Eq. 13; AlexNet with ``lpips_net: alex``).
        identity: lambda_3, ArcFace features at five levels (Eq. 14; the embedding with
            ``identity_features: embedding``).
        l2: the pixel MSE of plain pSp (``F.mse_loss``; not in Eq. 15: 0 there).
        w_norm: pSp's ``w_norm`` regulariser ``mean_b ||ws_b - w_mean||_2`` over the whole (N, D) code (0: off).
    """

    pixel: float = 10.0
    lpips: float = 0.2
    identity: float = 0.1
    l2: float = 0.0
    w_norm: float = 0.0


@dataclass
class RegressorLossWeights:
    """The regressor's loss weights.

    Attributes:
        pixel: L1 to the true UV map.
        perceptual: LPIPS-VGG to the true map (pix2pixHD's VGG feature term).
        adversarial: pix2pixHD's GAN term (multi-scale PatchGAN, Eq. 5; 0 with ``feature_matching`` 0: no D).
        feature_matching: pix2pixHD's discriminator feature matching (Eq. 4; its lambda 10).
    """

    pixel: float = 1.0
    perceptual: float = 0.1
    adversarial: float = 1.0
    feature_matching: float = 10.0


def map_to_unit(x: Tensor, span: Tensor) -> Tensor:
    """(B, 1, S, S) signed maps -> [0, 1] images: ``(x / span + 1) / 2``, clamped (``span``: (B, 1, 1, 1))."""
    return (0.5 * (x / span + 1.0)).clamp(0, 1)


def map_identity_loss(identity: nn.Module, pred: Tensor, target: Tensor) -> Tensor:
    """Eq. 14 between (B, 1, S, S) maps: both scaled by the target's largest ``|value|`` per sample into [0, 1]."""
    span = target.detach().abs().flatten(1).amax(1).clamp_min(1e-6)[:, None, None, None]
    return identity(map_to_unit(pred, span), map_to_unit(target, span))


def _lpips(weights: str | None, weight: float, key: str, what: str, net: str = "vgg") -> LPIPS | None:
    if not weight:
        return None
    trunk = {"vgg": "VGG16", "alex": "AlexNet"}[net]
    if weights is None:
        warn_missing_weights(
            key,
            f"{trunk} (LPIPS, {what})",
            f"the LPIPS term (weight {weight:g}) runs on a frozen RANDOM {trunk}",
            logger=__name__,
        )
    return LPIPS(net, trunk_weights_path=weights, allow_random=weights is None, input_range="signed")


def _span(map_scale_mm: float) -> float:
    """The FaceScape encoding's [-1, 1] in units of ``map_scale_mm`` mm (the PSNR / SSIM data range)."""
    return 2.0 * FACESCAPE_MM_PER_UNIT / map_scale_mm


def _check_maps(maps: Tensor, resolution: int, what: str) -> None:
    if maps.shape[1:] != (1, resolution, resolution):
        raise ValueError(
            f"{what}: expected (B, 1, {resolution}, {resolution}) displacement maps, got {tuple(maps.shape)}"
        )
    if not torch.isfinite(maps).all():
        raise ValueError(f"{what}: the displacement maps contain NaN or infinite values")


# ------------------------------------------------------------------------------------------------ the regressor
class RegressorModule(LightningModule):
    """Training of the image -> UV displacement regressor on renders of the synthetic world (module docstring).

    Args:
        resolution: the UV map side (the DataModule's).
        image_size: the render side.
        bump_gain: displacement gain of the renders' bump-mapped shading (:class:`FaceRenderer`).
        model_path: the bilinear model (``synthetic``; the maps' identity / expression vectors are its).
        degradation: the photo degradation (Table III: 64^2 + Gaussian blur), for ``degrade_prob`` and validation.
        degrade_prob: fraction of training images degraded (0: clean renders only).
        ngf, n_downsampling, n_blocks, max_channels: :class:`GlobalGenerator`'s widths and depth.
        loss_weights: :class:`RegressorLossWeights`.
        lpips_weights: torchvision ``vgg16-397923af.pth`` for the perceptual term (None: random VGG, a WARNING).
        lr: Adam learning rate (pix2pixHD: 2e-4, betas (0.5, 0.999)).
        map_unit_mm: millimetres per unit of the predicted maps (None: the first training batch's ``scale_mm``).
        log_images_every_n_steps: batches between TensorBoard grids (0: never).
        d_channels, d_layers, num_d: the multi-scale discriminator's first width, strided layers per PatchGAN and
            scales (pix2pixHD: 64, 3, 2-3; ``d_layers`` 2 suits 32^2 maps, 3 needs 128^2; too deep for the maps is a
            clear error).
        gan_kind: its loss (pix2pixHD: ``lsgan``; ``non_saturating`` / ``hinge``).
    """

    def __init__(
        self,
        resolution: int = 32,
        image_size: int = 128,
        bump_gain: float = 1.0,
        model_path: str = "synthetic",
        degradation: Degradation | None = None,
        degrade_prob: float = 0.0,
        ngf: int = 64,
        n_downsampling: int = 3,
        n_blocks: int = 9,
        max_channels: int = 1024,
        loss_weights: RegressorLossWeights | None = None,
        lpips_weights: str | None = None,
        lr: float = 2e-4,
        map_unit_mm: float | None = None,
        log_images_every_n_steps: int = 200,
        max_logged_images: int = 8,
        d_channels: int = 64,
        d_layers: int = 2,
        num_d: int = 2,
        gan_kind: GanLossKind = "lsgan",
    ) -> None:
        super().__init__()
        if not 0.0 <= degrade_prob <= 1.0:
            raise ValueError(f"degrade_prob must be in [0, 1], got {degrade_prob}")
        self.degradation = degradation or Degradation(size=max(8, image_size // 2), blur_sigma=1.0)
        self.weights = loss_weights or RegressorLossWeights()
        self.save_hyperparameters(
            {
                "resolution": int(resolution),
                "image_size": int(image_size),
                "bump_gain": float(bump_gain),
                "model_path": model_path,
                "degradation": asdict(self.degradation),
                "degrade_prob": float(degrade_prob),
                "ngf": int(ngf),
                "n_downsampling": int(n_downsampling),
                "n_blocks": int(n_blocks),
                "max_channels": int(max_channels),
                "loss_weights": asdict(self.weights),
                "lpips_weights": lpips_weights,
                "lr": float(lr),
                "map_unit_mm": map_unit_mm,
                "log_images_every_n_steps": int(log_images_every_n_steps),
                "max_logged_images": int(max_logged_images),
                "d_channels": int(d_channels),
                "d_layers": int(d_layers),
                "num_d": int(num_d),
                "gan_kind": gan_kind,
            }
        )
        self.automatic_optimization = False
        self.resolution, self.degrade_prob = int(resolution), float(degrade_prob)
        self.net = GlobalGenerator(
            3, 1, ngf, n_downsampling, n_blocks, max_channels, input_size=int(image_size), output_size=int(resolution)
        )
        self.renderer = FaceRenderer(bilinear_model(model_path), image_size, bump_gain)
        self.perceptual = _lpips(
            lpips_weights, self.weights.perceptual, "model.init_args.lpips_weights", "the regressor's perceptual term"
        )
        self.gan_kind = gan_kind
        self.discriminator = None
        if self.weights.adversarial or self.weights.feature_matching:  # pix2pixHD's D on [image, map] (4 channels)
            self.discriminator = MultiscaleDiscriminator(4, d_channels, d_layers, num_d, norm="instance")
            try:
                with torch.no_grad():
                    self.discriminator(torch.zeros(2, 4, self.resolution, self.resolution))
            except (RuntimeError, ValueError) as err:
                raise ValueError(
                    f"the regressor's discriminator (d_layers={d_layers}, num_d={num_d}) does not fit "
                    f"{self.resolution}^2 maps ({err}): lower model.init_args.d_layers or num_d (32^2: d_layers 2)"
                ) from None
        self.guard = GuardedStep.for_lightning(self, name="DNPM regressor", logger=__name__)
        self.register_buffer("map_unit_mm", torch.tensor(float(map_unit_mm or 0.0), dtype=torch.float64))
        self.lr = float(lr)
        self.log_images_every_n_steps, self.max_logged_images = int(log_images_every_n_steps), int(max_logged_images)
        self._rng = random.Random(0)

    def _batch(self, batch) -> tuple[Tensor, Tensor]:
        """(clean render (B, 3, H, H), target map (B, 1, S, S) in ``map_unit_mm``)."""
        maps, scale = maps_of_batch(batch)
        _check_maps(maps, self.resolution, "regressor batch")
        if float(self.map_unit_mm) == 0.0:
            self.map_unit_mm.fill_(scale)
        images = self.renderer(batch.identity.to(maps), batch.expression.to(maps), maps * scale)
        return images, maps * (scale / float(self.map_unit_mm))

    def _critic(self, images: Tensor, maps: Tensor) -> list[list[Tensor]]:
        """D's features (per scale, logits last) of ``[image area-resized to the map, map]``."""
        condition = F.interpolate(images, size=maps.shape[-2:], mode="area")
        return self.discriminator(torch.cat([condition, maps], dim=1))

    def losses(self, images: Tensor, target: Tensor, pred: Tensor | None = None) -> tuple[dict[str, Tensor], Tensor]:
        """The regressor's terms (module docstring) and its prediction (``pred``: ``R(images)`` if already made)."""
        pred = self.net(images) if pred is None else pred
        losses = {"pixel": (pred - target).abs().mean()}
        if self.perceptual is not None:
            losses["perceptual"] = map_lpips(self.perceptual, pred, target)
        if self.discriminator is not None:
            fake = self._critic(images, pred)
            if self.weights.adversarial:
                losses["adversarial"] = generator_loss(MultiscaleDiscriminator.logits(fake), self.gan_kind)
            if self.weights.feature_matching:
                with torch.no_grad():
                    real = self._critic(images, target)
                losses["feature_matching"] = feature_matching_loss(real, fake)  # pix2pixHD Eq. 4
        return losses, pred

    def discriminator_losses(self, images: Tensor, target: Tensor, pred: Tensor) -> dict[str, Tensor]:
        """D's side of pix2pixHD's GAN term: true maps "real", predicted (detached) "fake", every scale."""
        real = MultiscaleDiscriminator.logits(self._critic(images, target))
        fake = MultiscaleDiscriminator.logits(self._critic(images, pred.detach()))
        return {"discriminator": discriminator_loss(real, fake, self.gan_kind)}

    def training_step(self, batch, batch_idx: int) -> None:
        images, target = self._batch(batch)
        if self.degrade_prob > 0:
            pick = torch.tensor(
                [self._rng.random() < self.degrade_prob for _ in range(len(images))], device=images.device
            )[:, None, None, None]
            images = torch.where(pick, self.degradation(images), images)
        optimizers = self.optimizers()
        opt_g, opt_d = optimizers if isinstance(optimizers, list) else (optimizers, None)
        d_losses, pred = {}, self.net(images)  # one forward of R serves both steps
        if opt_d is not None:  # D's step (on the detached prediction), then R's (D frozen), as pix2pixHD
            self.toggle_optimizer(opt_d)
            d_losses = self.discriminator_losses(images, target, pred)
            self.guard(opt_d, d_losses, {"discriminator": 1.0})
            self.untoggle_optimizer(opt_d)
            self.toggle_optimizer(opt_g)
        losses, pred = self.losses(images, target, pred)
        total = self.guard(opt_g, losses, self.weights).total
        if opt_d is not None:
            self.untoggle_optimizer(opt_g)
        losses.update(d_losses)
        b = target.shape[0]
        for name, value in losses.items():
            self.log(f"train/loss_{name}", value.detach(), on_step=True, on_epoch=False, sync_dist=True, batch_size=b)
        self.log("train/loss", total, on_step=True, on_epoch=False, prog_bar=True, sync_dist=True, batch_size=b)
        n, writer = self.log_images_every_n_steps, tensorboard_writer(self.logger, self.global_rank)
        if writer is not None and n > 0 and batch_idx % n == 0:
            k, span = self.max_logged_images, float(target.abs().amax())
            side = images.shape[-1]
            up = lambda m: torch.nn.functional.interpolate(colorize_displacement(m[:k], span), size=side)  # noqa
            writer.add_image(
                "train/render_target_predicted",
                rows_grid(images[:k], up(target), up(pred.detach()), max_images=k),
                self.global_step,
            )

    def validation_step(self, batch, batch_idx: int) -> None:
        images, target = self._batch(batch)
        span, b = _span(float(self.map_unit_mm)), target.shape[0]
        for name, x in (("clean", images), ("degraded", self.degradation(images))):
            pred = self.net(x)
            self.log(f"val/psnr_{name}", psnr(pred, target, data_range=span).mean(), sync_dist=True, batch_size=b)
            self.log(f"val/ssim_{name}", ssim(pred, target, data_range=span).mean(), sync_dist=True, batch_size=b)

    def configure_optimizers(self):
        opt_g = torch.optim.Adam(self.net.parameters(), lr=self.lr, betas=(0.5, 0.999))
        if self.discriminator is None:
            return opt_g
        return [opt_g, torch.optim.Adam(self.discriminator.parameters(), lr=self.lr, betas=(0.5, 0.999))]


def regressor_network(hp: dict) -> GlobalGenerator:
    """The image -> UV displacement regressor (RGB in, one displacement channel out) for a RegressorModule's
    hyper-parameters (``ngf``, ``n_downsampling``, ``n_blocks``, ``max_channels``, ``image_size``,
    ``resolution``)."""
    return GlobalGenerator(
        3,
        1,
        hp["ngf"],
        hp["n_downsampling"],
        hp["n_blocks"],
        hp["max_channels"],
        input_size=hp["image_size"],
        output_size=hp["resolution"],
    )


def load_regressor(
    path: str, config_key: str = "model.init_args.regressor_ckpt"
) -> tuple[GlobalGenerator, dict[str, Any], float]:
    """The regressor of a :class:`RegressorModule` checkpoint (``weights_only=True``).

    Returns:
        ``(net (eval, frozen), hyper-parameters, millimetres per unit of its output)``.
    """
    ckpt = read_checkpoint(
        path, what="image -> UV displacement regressor (a RegressorModule checkpoint)", config_key=config_key
    )
    hp = ckpt.get("hyper_parameters", {})
    need = ("resolution", "image_size", "ngf", "n_downsampling", "n_blocks", "max_channels", "degradation")
    if any(k not in hp for k in need):
        raise AssetFormatError(
            f"{path} (set by {config_key}) is not a RegressorModule checkpoint (its "
            f"hyper-parameters lack {[k for k in need if k not in hp]}); train one with "
            "configs/dnpm_regressor.yaml"
        )
    net = regressor_network(hp)
    state = ckpt.get("state_dict", {})
    net.load_state_dict({k[len("net.") :]: v for k, v in state.items() if k.startswith("net.")}, strict=True)
    unit = float(state.get("map_unit_mm", torch.tensor(0.0)))
    if not unit > 0:
        raise AssetFormatError(f"{path} (set by {config_key}): the regressor never saw a batch (map_unit_mm unset)")
    return net.eval().requires_grad_(False), dict(hp), unit


# ------------------------------------------------------------------------------------------------------- E_deg
@dataclass
class EncoderSettings:
    """E_deg's architecture (:class:`GradualStyleEncoder`).

    Attributes:
        input_size: side the input map is resized to (pSp: 256).
        depth: IResNet depth (pSp: 50).
        se: IR-SE blocks (pSp's ``ir_se``).
        trunk_weights: optional ArcFace IResNet ``backbone.pth`` initialising the trunk.
        head_init: initial gain of the style heads.
    """

    input_size: int = 256
    depth: int = 50
    se: bool = True
    trunk_weights: str | None = None
    head_init: float = 0.1


@dataclass
class PhotoSettings:
    """``input: photos``: where the low-quality maps come from.

    Attributes:
        regressor_ckpt: the RegressorModule checkpoint (frozen; its renders and degradation are used).
        model_path: the bilinear model of the renders (None: the regressor's).
    """

    regressor_ckpt: str | None = None
    model_path: str | None = None


class RestoreModule(LightningModule):
    """E_deg's training (Eq. 11-15) through the frozen DNPM generator (module docstring).

    Args:
        init_ckpt: the trained DnpmModule checkpoint (its EMA generator). Required unless ``allow_random_init``.
        allow_random_init: permit a random generator without ``init_ckpt`` (tests; a WARNING).
        resolution: map side; must match the generator's.
        generator: the generator's constructor arguments when random or restored from this module's checkpoint.
        map_scale_mm: millimetres per generator unit (None: the DNPM checkpoint's).
        input: ``maps`` (Table II: degraded maps) or ``photos`` (Table III: the regressor on degraded renders).
        degradation: ``input: maps``: the map degradation (x1/4: ``factor: 4``; x1/8: ``factor: 8``).
        photos: ``input: photos``: :class:`PhotoSettings`.
        encoder: :class:`EncoderSettings`.
        loss_weights: Eq. 15's lambdas.
        lpips_weights: torchvision ``vgg16-397923af.pth`` (LPIPS-VGG of Eq. 13; ``alexnet-owt-7be5be79.pth`` with
            ``lpips_net: alex``).
        arcface_weights: insightface ``arcface_torch`` IResNet ``backbone.pth`` (Eq. 14).
        arcface_depth: its depth (50 / 100 published; 18 for CPU tests).
        lpips_net: ``vgg`` (Eq. 13) or ``alex`` (plain pSp's LPIPS).
        identity_features: ``levels`` (Eq. 14: ArcFace features at five levels) or ``embedding`` (plain pSp's
            ``1 - cos`` of the final embeddings).
        lr: Adam's learning rate.
        log_images_every_n_steps: batches between TensorBoard grids (0: never).
        max_logged_images: samples per grid.
    """

    def __init__(
        self,
        init_ckpt: str | None = None,
        allow_random_init: bool = False,
        resolution: int = 32,
        generator: dict[str, Any] | None = None,
        map_scale_mm: float | None = None,
        input: RestoreInput = "maps",
        degradation: Degradation | None = None,
        photos: PhotoSettings | None = None,
        encoder: EncoderSettings | None = None,
        loss_weights: RestoreLossWeights | None = None,
        lpips_weights: str | None = None,
        arcface_weights: str | None = None,
        arcface_depth: int = 50,
        lr: float = 1e-4,
        log_images_every_n_steps: int = 200,
        max_logged_images: int = 8,
        regressor: dict[str, Any] | None = None,
        lpips_net: Literal["vgg", "alex"] = "vgg",
        identity_features: Literal["levels", "embedding"] = "levels",
    ) -> None:
        super().__init__()
        if input not in ("maps", "photos"):
            raise ValueError(f"input must be 'maps' (Table II) or 'photos' (Table III), got {input!r}")
        if lpips_net not in ("vgg", "alex") or identity_features not in ("levels", "embedding"):
            raise ValueError(
                f"lpips_net must be 'vgg' or 'alex' and identity_features 'levels' or 'embedding', got "
                f"{lpips_net!r}, {identity_features!r}"
            )
        if init_ckpt is not None:
            gen, config, ckpt_scale = load_generator(init_ckpt, resolution)
            map_scale_mm = ckpt_scale if map_scale_mm is None else map_scale_mm
        else:
            if not allow_random_init:
                raise ValueError(
                    "E_deg trains through a pre-trained DNPM generator: set "
                    "`--model.init_args.init_ckpt PATH` to a DnpmModule checkpoint (configs/dnpm.yaml), "
                    "or `--model.init_args.allow_random_init true` for a random generator (tests only)"
                )
            restored = bool((generator or {}).get("_source") == "restored")  # this module's own checkpoint
            config = {k: v for k, v in (generator or {"resolution": resolution}).items() if k != "_source"}
            config.setdefault("resolution", resolution)
            if int(config["resolution"]) != int(resolution):
                raise CheckpointMismatchError(f"generator resolution {config['resolution']} != resolution {resolution}")
            gen = Generator(**config)
            if not restored:
                warn_missing_weights(
                    "model.init_args.init_ckpt",
                    "the DNPM generator (E_deg, Eq. 11)",
                    "E_deg trains through a RANDOM generator (allow_random_init: tests only): its maps mean nothing",
                    logger=__name__,
                )
        self.map_scale_mm = FACESCAPE_MM_PER_UNIT if map_scale_mm is None else float(map_scale_mm)
        self.input = input
        self.degradation = degradation or Degradation(factor=4)
        self.photo_settings = photos or PhotoSettings()
        self.encoder_settings = encoder or EncoderSettings()
        self.weights = loss_weights or RestoreLossWeights()
        self.resolution = int(resolution)
        self.generator = gen.eval().requires_grad_(False)
        es = self.encoder_settings
        self.encoder = GradualStyleEncoder(
            gen.n_latent, gen.w_dim, 1, es.input_size, es.depth, es.se, es.trunk_weights, es.head_init
        )
        # photos: the frozen regressor and the renders it was trained on (from its checkpoint, or from this
        # module's own checkpoint: ``regressor`` holds its hyper-parameters and the unit)
        self.regressor, self.renderer, self.photo_degradation, self.regressor_unit_mm = None, None, None, 0.0
        if input == "photos":
            if self.photo_settings.regressor_ckpt is not None:
                net, reg_hp, unit = load_regressor(self.photo_settings.regressor_ckpt)
                regressor = {**reg_hp, "map_unit_mm": unit}
            elif regressor is not None:
                regressor = dict(regressor)
                net = regressor_network(regressor).requires_grad_(False)
            else:
                raise ValueError(
                    "input: photos needs the trained image -> UV regressor: set "
                    "`--model.init_args.photos.regressor_ckpt PATH` (a RegressorModule checkpoint of "
                    "configs/dnpm_regressor.yaml)"
                )
            if int(regressor["resolution"]) != self.resolution:
                raise CheckpointMismatchError(
                    f"the regressor makes {regressor['resolution']}^2 maps, the generator {self.resolution}^2"
                )
            self.regressor = net.eval()
            model_path = self.photo_settings.model_path or regressor.get("model_path", "synthetic")
            self.renderer = FaceRenderer(bilinear_model(model_path), regressor["image_size"], regressor["bump_gain"])
            self.photo_degradation = Degradation(**regressor["degradation"])
            self.regressor_unit_mm = float(regressor["map_unit_mm"])
        self.save_hyperparameters(
            {
                "init_ckpt": None,
                "allow_random_init": True,
                "resolution": self.resolution,
                "generator": {**config, "_source": "restored"},
                "map_scale_mm": self.map_scale_mm,
                "input": input,
                "degradation": asdict(self.degradation),
                "photos": {"regressor_ckpt": None, "model_path": self.photo_settings.model_path},
                "encoder": asdict(self.encoder_settings),
                "loss_weights": asdict(self.weights),
                "lpips_weights": lpips_weights,
                "arcface_weights": arcface_weights,
                "arcface_depth": int(arcface_depth),
                "lr": float(lr),
                "log_images_every_n_steps": int(log_images_every_n_steps),
                "max_logged_images": int(max_logged_images),
                "regressor": None if self.regressor is None else {**regressor, "map_unit_mm": self.regressor_unit_mm},
                "lpips_net": lpips_net,
                "identity_features": identity_features,
            }
        )
        self.lpips = _lpips(lpips_weights, self.weights.lpips, "model.init_args.lpips_weights", "Eq. 13", lpips_net)
        self.identity = None
        if self.weights.identity:
            if arcface_weights is None:
                warn_missing_weights(
                    "model.init_args.arcface_weights",
                    f"ArcFace IResNet-{arcface_depth} (identity loss, Eq. 14)",
                    f"L_id (weight {self.weights.identity:g}) compares features of "
                    "a frozen RANDOM IResNet: it measures little",
                    logger=__name__,
                )
            self.identity = IdentityLoss(
                "arcface",
                arcface_weights,
                allow_random=arcface_weights is None,
                arcface_depth=arcface_depth,
                feature_layers=ARCFACE_LEVELS if identity_features == "levels" else (),
                embedding_weight=0.0 if identity_features == "levels" else 1.0,
            )
        self.lr = float(lr)
        self.log_images_every_n_steps, self.max_logged_images = int(log_images_every_n_steps), int(max_logged_images)

    # ------------------------------------------------------------------------------------------------ pieces
    def high_and_low(self, batch) -> tuple[Tensor, Tensor]:
        """``(I_high, I_low)``, both (B, 1, S, S) in the generator's units."""
        maps, scale = maps_of_batch(batch)
        _check_maps(maps, self.resolution, "E_deg batch")
        high = maps * (scale / self.map_scale_mm)
        if self.input == "maps":
            return high, self.degradation(high)
        with torch.no_grad():
            photo = self.photo_degradation(
                self.renderer(batch.identity.to(maps), batch.expression.to(maps), maps * scale)
            )
            low = self.regressor(photo) * (self.regressor_unit_mm / self.map_scale_mm)
        return high, low

    def forward(self, low: Tensor) -> Tensor:
        """Eq. 11: (B, 1, S, S) ``I_low`` -> ``I_gen``."""
        _check_maps(low, self.resolution, "E_deg input")
        return restore(self.encoder, self.generator, low)[0]

    def losses(self, high: Tensor, low: Tensor) -> tuple[dict[str, Tensor], Tensor]:
        """Eq. 12-14 terms (and plain pSp's ``l2`` / ``w_norm``; those with a non-zero weight) and ``I_gen``."""
        _check_maps(low, self.resolution, "E_deg input")
        gen, ws = restore(self.encoder, self.generator, low)  # Eq. 11
        losses = {}
        if self.weights.pixel:
            losses["pixel"] = (gen - high).abs().mean()  # Eq. 12
        if self.weights.l2:
            losses["l2"] = (gen - high).square().mean()  # pSp's L2
        if self.lpips is not None:
            losses["lpips"] = map_lpips(self.lpips, gen, high)  # Eq. 13
        if self.identity is not None:
            losses["identity"] = map_identity_loss(self.identity, gen, high)  # Eq. 14
        if self.weights.w_norm:
            losses["w_norm"] = (ws - self.generator.w_avg.to(ws)).flatten(1).norm(dim=1).mean()  # pSp's w_norm
        return losses, gen

    def training_step(self, batch, batch_idx: int) -> Tensor:
        high, low = self.high_and_low(batch)
        losses, gen = self.losses(high, low)
        if not losses:
            raise ValueError("every loss weight is 0: nothing to train E_deg with")
        total = sum(getattr(self.weights, k) * v for k, v in losses.items())  # Eq. 15
        b = high.shape[0]
        for name, value in losses.items():
            self.log(f"train/loss_{name}", value, on_step=True, on_epoch=False, sync_dist=True, batch_size=b)
        self.log("train/loss", total, on_step=True, on_epoch=False, prog_bar=True, sync_dist=True, batch_size=b)
        n, writer = self.log_images_every_n_steps, tensorboard_writer(self.logger, self.global_rank)
        if writer is not None and n > 0 and batch_idx % n == 0:
            k, span = self.max_logged_images, float(high.abs().amax())
            writer.add_image(
                "train/low_generated_high",
                rows_grid(*(colorize_displacement(x[:k].detach(), span) for x in (low, gen, high)), max_images=k),
                self.global_step,
            )
        return total

    def validation_step(self, batch, batch_idx: int) -> None:
        high, low = self.high_and_low(batch)
        gen = self(low)
        span, b = _span(self.map_scale_mm), high.shape[0]
        self.log("val/psnr", psnr(gen, high, data_range=span).mean(), sync_dist=True, batch_size=b)
        self.log("val/ssim", ssim(gen, high, data_range=span).mean(), sync_dist=True, batch_size=b)
        self.log("val/psnr_input", psnr(low, high, data_range=span).mean(), sync_dist=True, batch_size=b)
        self.log("val/ssim_input", ssim(low, high, data_range=span).mean(), sync_dist=True, batch_size=b)

    def configure_optimizers(self):
        return torch.optim.Adam(self.encoder.parameters(), lr=self.lr)

    def train(self, mode: bool = True) -> RestoreModule:
        super().train(mode)
        self.generator.eval()
        if self.regressor is not None:
            self.regressor.eval()
        return self


def load_restorer(path: str, config_key: str = "--ckpt") -> RestoreModule:
    """A whole :class:`RestoreModule` (E_deg, the frozen generator, and for photos the regressor) from its own
    checkpoint (``weights_only=True``), in eval mode."""
    ckpt = read_checkpoint(path, what="E_deg checkpoint (a RestoreModule checkpoint)", config_key=config_key)
    hp = constructor_arguments(ckpt.get("hyper_parameters", {}))  # lightning-cli adds _class_path, ...
    if "encoder" not in hp or "generator" not in hp or "input" not in hp:
        raise AssetFormatError(
            f"{path} (set by {config_key}) is not a RestoreModule checkpoint; train one with configs/dnpm_restore.yaml"
        )
    hp["degradation"] = Degradation(**hp["degradation"])
    hp["photos"] = PhotoSettings(**hp["photos"])
    hp["encoder"] = EncoderSettings(**{**hp["encoder"], "trunk_weights": None})
    hp["loss_weights"] = RestoreLossWeights(pixel=1.0, lpips=0.0, identity=0.0)  # inference: no loss networks
    hp["lpips_weights"] = hp["arcface_weights"] = None
    module = RestoreModule(**hp)
    state = {k: v for k, v in ckpt.get("state_dict", {}).items() if not k.startswith(("lpips.", "identity."))}
    module.load_state_dict(state, strict=True)
    return module.eval()


@dataclass
class RestoreScores:
    """Table II / III rows: PSNR / SSIM of ``I_gen`` and of the input ``I_low`` against ``I_high``."""

    psnr: float
    ssim: float
    input_psnr: float
    input_ssim: float
    extra: dict[str, tuple[float, float]] = field(default_factory=dict)

    def format(self, title: str, input_name: str = "bicubic") -> str:
        rows = [
            (input_name, self.input_psnr, self.input_ssim),
            *((k, *v) for k, v in self.extra.items()),
            ("E_deg (ours)", self.psnr, self.ssim),
        ]
        lines = [title, f"  {'method':<24} {'PSNR':>8} {'SSIM':>7}"]
        lines += [f"  {name:<24} {p:8.3f} {s:7.4f}" for name, p, s in rows]
        return "\n".join(lines)


@torch.no_grad()
def restore_scores(module: RestoreModule, batches) -> RestoreScores:
    """Mean PSNR / SSIM over the maps of ``batches`` (DisplacementBatch-es) of E_deg's output and of its input."""
    module.eval()
    gens, lows, highs = [], [], []
    for batch in batches:
        high, low = module.high_and_low(batch)
        gens.append(module(low))
        lows.append(low)
        highs.append(high)
    gen, low, high = torch.cat(gens), torch.cat(lows), torch.cat(highs)
    span = _span(module.map_scale_mm)
    return RestoreScores(
        float(psnr(gen, high, data_range=span).mean()),
        float(ssim(gen, high, data_range=span).mean()),
        float(psnr(low, high, data_range=span).mean()),
        float(ssim(low, high, data_range=span).mean()),
    )
