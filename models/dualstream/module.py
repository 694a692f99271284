"""DualStream's training recipes of stages 2 and 3 (paper §IV-B): :class:`TextureModule` and :class:`DualStreamModule`.

* Stage 2, :class:`TextureModule` (``configs/dualstream_texture.yaml``): the texture stream (``G_t`` with SSRPM and
  SRSM, :mod:`dualstream.texture`) and its PatchGAN discriminator on the FTD (:mod:`dualstream.texture_data`),
  Adam lr 1e-4 for both "in the manner suggested in [42]" (pix2pix: betas (0.5, 0.999), one D step then one G step
  per batch), losses Eq. 15-18 (:mod:`dualstream.texture_losses`). It starts from the geometry stage's checkpoint
  (``init_ckpt``): the geometry stream is carried along frozen, so that this stage's checkpoint holds both streams
  for stage 3 (and, with ``albedo_input: geometry``, the albedo map ``I_ua`` comes from the geometry stream's
  predicted albedo coefficients instead of the dataset's).
* Stage 3, :class:`DualStreamModule` (``configs/dualstream.yaml``): see :mod:`dualstream.fusion`.

A later stage without ``init_ckpt`` refuses to start unless ``allow_random_init: true`` (then a console WARNING
says what the run loses). Checkpoints load with ``torch.load(weights_only=True)``
(:func:`facelab.io.weights.read_state_dict`). Logging: ``train/loss_<term>``, ``val/*`` (synchronised across
ranks), image grids from rank 0 only.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Literal

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from torch import Tensor, nn

from dualstream.fusion import (
    Fusion,
    FusionLossWeights,
    FusionOutput,
    build_geometry_stream,
    fusion_losses,
    visibility_mask,
)
from dualstream.texture import StylizationKind, TextureGenerator, landmark_heatmaps
from dualstream.texture_data import AlbedoMapper, TextureBatch
from dualstream.texture_losses import ContextualTextureLoss, TextureLossWeights, reconstruction_loss
from facelab.io.weights import load_state_dict_strict, read_checkpoint, read_state_dict
from facelab.log import get_logger, warn_missing_weights
from facelab.losses import IdentityLoss, discriminator_loss, generator_loss
from facelab.morphable import load_model
from facelab.nn import PatchDiscriminator
from facelab.training import GuardedStep, ImageGridLogger, tensorboard_writer

__all__ = ["DualStreamModule", "TextureModule", "load_stage_checkpoint", "region_colors", "require_init"]

log = get_logger(__name__)


def require_init(init_ckpt: str | None, allow_random_init: bool, stage: str, previous: str) -> None:
    """Refuse a later stage without the previous stage's checkpoint unless ``allow_random_init`` (then WARN)."""
    if init_ckpt is not None:
        return
    if not allow_random_init:
        raise ValueError(f"the DualStream {stage} stage starts from the {previous} stage's checkpoint: pass "
                         "--model.init_args.init_ckpt PATH (e.g. logs/<previous run>/version_N/checkpoints/last.ckpt), "
                         "or --model.init_args.allow_random_init true to train from random initialisation")
    warn_missing_weights("model.init_args.init_ckpt", f"the DualStream {previous} stage",
                         f"the {stage} stage starts from RANDOM {previous}-stage weights "
                         "(allow_random_init: true), which the paper's recipe never does", logger=__name__)


def load_stage_checkpoint(modules: dict[str, nn.Module], path: str, config_key: str = "model.init_args.init_ckpt"
                          ) -> list[str]:
    """Load submodules from a previous stage's checkpoint (Lightning ``state_dict`` keys ``<name>.*``), strictly
    per submodule; returns the names found. A submodule whose prefix is absent is left as it is (logged).

    Raises:
        MissingAssetError: no such file. AssetFormatError: no submodule found, or keys / shapes that do not fit.
    """
    state = read_state_dict(path, what="DualStream stage checkpoint", config_key=config_key)
    found = []
    for name, module in modules.items():
        prefix = f"{name}."
        sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if not sub:
            log.warning("DualStream: %s has no %s.* weights; that part keeps its initialisation", path, name)
            continue
        load_state_dict_strict(module, sub, path, hint=f"set by {config_key}; same network settings as that run?")
        found.append(name)
    if not found:
        from facelab.errors import AssetFormatError

        raise AssetFormatError(f"{path} ({config_key}) holds none of {sorted(modules)}: not a DualStream stage "
                               "checkpoint")
    return found


def carried_expression_gain(init_ckpt: str | None, given: float | None, config_key: str = "model.init_args.init_ckpt"
                            ) -> float:
    """The ASM codec's ``expression_gain`` (:class:`dualstream.asm.AsmRange`) of a later stage: the decoders of
    stage 1 learned ``a_exp`` at that gain, so every later stage must decode with it. Read from the previous stage's
    checkpoint hyper-parameters (each stage saves the gain it used); ``given`` (the YAML value) must agree with it;
    neither: the default 8.

    Raises:
        ValueError: ``given`` differs from the checkpoint's gain.
    """
    carried = None
    if init_ckpt is not None:
        hp = read_checkpoint(init_ckpt, what="DualStream stage checkpoint", config_key=config_key).get(
            "hyper_parameters") or {}
        carried = hp.get("expression_gain")
    if given is not None and carried is not None and float(given) != float(carried):
        raise ValueError(f"model.init_args.expression_gain={given} but {init_ckpt} was trained with "
                         f"expression_gain={carried}: the expression decoder's outputs are scaled by it; leave the "
                         "key unset to take the checkpoint's")
    for value in (given, carried):
        if value is not None:
            return float(value)
    return 8.0


def region_colors(regions: Tensor) -> Tensor:
    """(B, n, h, w) soft regions -> (B, 3, h, w) a fixed colour per region, blended by probability (for grids)."""
    n = regions.shape[1]
    g = torch.Generator().manual_seed(n)
    palette = torch.rand(n, 3, generator=g).to(regions)
    return torch.einsum("bnhw,nc->bchw", regions, palette)


def texture_mae(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Per-sample mean absolute error over the masked texels and channels (the paper's Table II metric): (B,)."""
    m = mask.expand_as(pred)
    return ((pred - target).abs() * m).sum(dim=(1, 2, 3)) / m.sum(dim=(1, 2, 3)).clamp_min(1.0)


class TextureModule(LightningModule):
    """Stage 2: the texture stream and its discriminator on the FTD (module docstring).

    Args:
        generator: ``G_t``; None builds :class:`TextureGenerator` from the settings below.
        discriminator: None builds the 70x70 :class:`facelab.nn.PatchDiscriminator` on ``[I_ua, I_a]`` (6 channels).
        num_regions: SSRPM's ``n`` (16; ablation 8 / 32).
        stylization: ``"srsm"`` or the ``"adain"`` ablation.
        generator_channels, region_level, stylize_levels: :class:`TextureGenerator` settings.
        loss_weights: Eq. 18's weights (None: 0.1, 3, 0.2).
        vgg_weights: torchvision VGG19 state dict of the contextual loss (missing: WARNING, random frozen VGG19).
        contextual_size: side the maps are resized to for the contextual loss (128: relu2_2 at 64^2).
        heatmap_sigma: width of the landmark heatmaps in pixels of the input image.
        gan_kind: :func:`facelab.losses.generator_loss` kind (``non_saturating`` = Eq. 16's log form).
        lr: Adam lr of G and D (1e-4). betas: Adam betas (pix2pix (0.5, 0.999)).
        init_ckpt: the geometry stage's checkpoint (``configs/dualstream_geometry.yaml``): its geometry stream is
            carried along frozen (required unless ``allow_random_init``).
        allow_random_init: start without ``init_ckpt`` (console WARNING).
        albedo_input: ``"data"`` (the FTD's ``I_ua``, the paper) or ``"geometry"`` (``I_ua`` from the carried
            geometry stream's predicted albedo coefficients).
        geometry: the geometry stream to carry (None: built by :func:`dualstream.fusion.build_geometry_stream`
            from ``geometry_args``).
        geometry_args: keyword arguments of that geometry stream (must match the geometry stage's).
        expression_gain: the ASM codec's gain; None: the geometry checkpoint's (:func:`carried_expression_gain`);
            saved so that stage 3 and inference decode with it.
        model_path: the BFM asset (albedo basis and UV layout of ``albedo_input: geometry`` and of stage 3).
        image_size: side of the input crops (checked against the batches; stage 3 and inference read it).
        uv_size: side of the maps.
        log_images_every_n_steps, max_logged_images: TensorBoard image grids (rank 0).
    """

    def __init__(
        self,
        generator: TextureGenerator | None = None,
        discriminator: nn.Module | None = None,
        num_regions: int = 16,
        stylization: StylizationKind = "srsm",
        generator_channels: tuple[int, ...] = (64, 128, 256, 256, 256),
        region_level: int = 3,
        stylize_levels: tuple[int, ...] = (3, 4),
        loss_weights: TextureLossWeights | None = None,
        vgg_weights: str | None = None,
        contextual_size: int = 128,
        heatmap_sigma: float = 2.0,
        gan_kind: Literal["non_saturating", "hinge", "lsgan"] = "non_saturating",
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.5, 0.999),
        init_ckpt: str | None = None,
        allow_random_init: bool = False,
        albedo_input: Literal["data", "geometry"] = "data",
        geometry: nn.Module | None = None,
        geometry_args: dict | None = None,
        expression_gain: float | None = None,
        model_path: str = "synthetic",
        image_size: int = 256,
        uv_size: int = 256,
        log_images_every_n_steps: int = 500,
        max_logged_images: int = 8,
    ) -> None:
        super().__init__()
        if isinstance(loss_weights, dict):
            loss_weights = TextureLossWeights(**loss_weights)
        self.image_size = int(image_size)
        if albedo_input not in ("data", "geometry"):
            raise ValueError(f"albedo_input must be 'data' or 'geometry', got {albedo_input!r}")
        self.automatic_optimization = False
        self.weights = loss_weights if loss_weights is not None else TextureLossWeights()
        self.lr, self.betas, self.gan_kind = float(lr), tuple(betas), gan_kind
        self.heatmap_sigma, self.albedo_input = float(heatmap_sigma), albedo_input
        self.generator = generator if generator is not None else TextureGenerator(
            channels=generator_channels, num_regions=num_regions, stylization=stylization,
            region_level=region_level, stylize_levels=stylize_levels)
        self.discriminator = discriminator if discriminator is not None else PatchDiscriminator(in_channels=6)
        self.contextual = ContextualTextureLoss(vgg_weights, contextual_size) if self.weights.contextual else None
        require_init(init_ckpt, allow_random_init, "texture", "geometry")
        expression_gain = carried_expression_gain(init_ckpt, expression_gain)
        self.geometry = self._carried_geometry(geometry, geometry_args, model_path, uv_size, init_ckpt)
        self.albedo_mapper = AlbedoMapper(load_model("bfm", model_path), uv_size) if albedo_input == "geometry" \
            else None
        self.image_grid = ImageGridLogger(log_images_every_n_steps, max_logged_images)
        self.guarded_step = GuardedStep.for_lightning(self, name="DualStream texture", logger=__name__)
        self.save_hyperparameters(ignore=["generator", "discriminator", "geometry", "loss_weights"])
        self.save_hyperparameters({"loss_weights": asdict(self.weights), "expression_gain": expression_gain})

    def _carried_geometry(self, geometry, geometry_args, model_path, uv_size, init_ckpt) -> nn.Module | None:
        """The frozen geometry stream of stage 1 (None when neither a checkpoint nor ``albedo_input: geometry``
        asks for it)."""
        if geometry is None and init_ckpt is None and self.albedo_input == "data":
            return None
        geometry = geometry if geometry is not None else build_geometry_stream(model_path, uv_size,
                                                                               **(geometry_args or {}))
        if init_ckpt is not None:
            load_stage_checkpoint({"stream": geometry}, init_ckpt)  # GeometryModule keeps it under stream.
        geometry.requires_grad_(False)
        return geometry.eval()

    def train(self, mode: bool = True) -> TextureModule:
        super().train(mode)
        if self.geometry is not None:
            self.geometry.eval()  # frozen in this stage: BatchNorm statistics stay those of stage 1
        return self

    # ---------------------------------------------------------------------------------------------- the stream
    def heatmaps(self, batch: TextureBatch) -> Tensor:
        """``K(I_o)``: (B, 68, H, W) heatmaps of the batch's landmarks."""
        return landmark_heatmaps(batch.landmarks_pix.to(batch.image), tuple(batch.image.shape[2:]),
                                 self.heatmap_sigma)

    def albedo_map(self, batch: TextureBatch) -> Tensor:
        """``I_ua`` of the batch: the dataset's, or from the geometry stream's predicted albedo coefficients."""
        if self.albedo_input == "data":
            return batch.albedo_map
        with torch.no_grad():
            return self.albedo_mapper(self.geometry(batch.image).albedo)

    def forward(self, batch: TextureBatch) -> tuple[Tensor, Tensor, Tensor]:
        """``(Î_a (B, 3, S, S), regions (B, n, h, w), I_ua)``."""
        albedo_map = self.albedo_map(batch)
        texture, regions = self.generator(albedo_map, batch.image, self.heatmaps(batch))
        return texture, regions, albedo_map

    def _check_batch(self, batch: TextureBatch) -> None:
        s = batch.texture.shape[-1]
        if batch.image.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(f"TextureModule was built for {self.image_size}x{self.image_size} images "
                             f"(model.init_args.image_size) but the batch has {tuple(batch.image.shape[-2:])}")
        if batch.albedo_map.shape != batch.texture.shape or batch.texture_mask.shape[-2:] != batch.texture.shape[-2:]:
            raise ValueError(f"FTD batch: albedo map {tuple(batch.albedo_map.shape)}, texture "
                             f"{tuple(batch.texture.shape)} and mask {tuple(batch.texture_mask.shape)} must share "
                             f"the map size (model.init_args.uv_size and data.init_args.uv_size alike, got {s})")

    # ---------------------------------------------------------------------------------------------- losses
    def _critic(self, albedo_map: Tensor, texture: Tensor) -> Tensor:
        return self.discriminator(torch.cat([albedo_map, texture], dim=1))

    def generator_losses(self, batch: TextureBatch, texture: Tensor, albedo_map: Tensor) -> dict[str, Tensor]:
        """Eq. 15-17 of the generator (Eq. 18 weights them)."""
        mask = batch.texture_mask
        losses = {"reconstruction": reconstruction_loss(texture, batch.texture, mask)}  # Eq. 15
        if self.contextual is not None:
            losses["contextual"] = self.contextual(texture, batch.texture, mask)  # Eq. 17
        if self.weights.adversarial:
            losses["adversarial"] = generator_loss(self._critic(albedo_map, texture * mask), self.gan_kind)  # Eq. 16
        return losses

    def discriminator_losses(self, batch: TextureBatch, texture: Tensor, albedo_map: Tensor) -> dict[str, Tensor]:
        """Eq. 16 of the discriminator: real ``[I_ua, I_a]`` vs fake ``[I_ua, Î_a]`` (masked alike)."""
        mask = batch.texture_mask
        real = self._critic(albedo_map, batch.texture * mask)
        fake = self._critic(albedo_map, texture.detach() * mask)
        return {"discriminator": discriminator_loss(real, fake, self.gan_kind)}

    # ---------------------------------------------------------------------------------------------- training
    def configure_optimizers(self):
        opt_g = torch.optim.Adam(self.generator.parameters(), lr=self.lr, betas=self.betas)
        opt_d = torch.optim.Adam(self.discriminator.parameters(), lr=self.lr, betas=self.betas)
        return [opt_g, opt_d]

    def training_step(self, batch: TextureBatch, batch_idx: int) -> None:
        self._check_batch(batch)
        opt_g, opt_d = self.optimizers()
        texture, regions, albedo_map = self(batch)
        losses: dict[str, Tensor] = {}
        if self.weights.adversarial:
            self.toggle_optimizer(opt_d)
            d_losses = self.discriminator_losses(batch, texture, albedo_map)
            self.guarded_step(opt_d, d_losses, {"discriminator": 1.0})
            self.untoggle_optimizer(opt_d)
            losses.update(d_losses)
        self.toggle_optimizer(opt_g)
        g_losses = self.generator_losses(batch, texture, albedo_map)
        losses["total"] = self.guarded_step(opt_g, g_losses, self.weights).total
        self.untoggle_optimizer(opt_g)
        losses.update(g_losses)
        for name, value in losses.items():
            self.log(f"train/loss_{name}", value.detach(), on_step=True, on_epoch=False, batch_size=batch.batch_size)
        self.log("train/skipped_steps", float(self.guarded_step.skipped), on_step=True, on_epoch=False,
                 batch_size=batch.batch_size)
        writer = tensorboard_writer(self.logger, self.global_rank)
        if self.image_grid.due(batch_idx, writer):
            self.image_grid.log(writer, "train/texture", self.panels(batch, texture, regions, albedo_map),
                                self.global_step)

    def panels(self, batch: TextureBatch, texture: Tensor, regions: Tensor, albedo_map: Tensor) -> list[Tensor]:
        """Input, albedo map, stylised texture, ground truth, regions (at the map size)."""
        size = tuple(texture.shape[2:])
        image = F.interpolate(batch.image, size=size, mode="bilinear", align_corners=False)
        regions = F.interpolate(region_colors(regions.detach()), size=size, mode="nearest")
        return [image, albedo_map, texture.detach(), batch.texture, regions]

    def validation_step(self, batch: TextureBatch, batch_idx: int) -> None:
        """Texture MAE (Table II) beside the linear-albedo baseline ``I_ua`` (the input map itself)."""
        self._check_batch(batch)
        texture, _, albedo_map = self(batch)
        mask = batch.texture_mask
        b = batch.batch_size
        self.log("val/texture_mae", texture_mae(texture, batch.texture, mask).mean(), batch_size=b, sync_dist=True)
        self.log("val/texture_mae_linear_albedo", texture_mae(albedo_map, batch.texture, mask).mean(), batch_size=b,
                 sync_dist=True)
        self.log("val/loss_reconstruction", reconstruction_loss(texture, batch.texture, mask), batch_size=b,
                 sync_dist=True)


class DualStreamModule(LightningModule):
    """Stage 3: end-to-end self-supervised fine-tuning of both streams through the fusion module (Eq. 19-23).

    Every part trains (geometry stream, texture generator; Adam lr 5e-5, the paper's "lower learning rate"); the
    losses are the fusion module's only (:mod:`dualstream.fusion`): occlusion-aware pixel loss, identity loss,
    landmark alignment, weights 0.1, 2, 1e-2. Batches are :class:`dualstream.data.AsmSample` (image, 68 landmarks,
    visibility; any ground truth is used for validation only).

    Args:
        geometry: the geometry stream; None: :func:`dualstream.fusion.build_geometry_stream` with
            ``geometry_args`` (must match stages 1 and 2).
        geometry_args: keyword arguments of :class:`dualstream.geometry.GeometryStream`.
        expression_gain: the ASM codec's gain; None: the texture checkpoint's (:func:`carried_expression_gain`).
        generator: the texture generator; None: :class:`TextureGenerator` from the settings below (must match
            stage 2).
        num_regions, stylization, generator_channels, region_level, stylize_levels: :class:`TextureGenerator`.
        model_path: the BFM (topology, UV layout, albedo basis).
        image_size: crop side. uv_size: map side.
        loss_weights: Eq. 23's weights (None: 0.1, 2, 1e-2).
        identity_weights: local ArcFace IResNet state dict of the identity loss (missing: WARNING, frozen random
            network). identity_backbone: ``arcface`` or ``facenet``. arcface_depth: 50 or 100.
        camera_distance: the render camera's distance in crop sides (:func:`dualstream.fusion.lift_to_camera`).
        heatmap_sigma: landmark-heatmap width (pixels).
        lr: Adam lr (5e-5). betas: Adam betas.
        init_ckpt: the texture stage's checkpoint (both streams; required unless ``allow_random_init``).
        allow_random_init: start without it (console WARNING).
        log_images_every_n_steps, max_logged_images: TensorBoard grids (rank 0): input, ASMs, albedo map,
            stylised texture, render.
    """

    def __init__(
        self,
        geometry: nn.Module | None = None,
        geometry_args: dict | None = None,
        expression_gain: float | None = None,
        generator: TextureGenerator | None = None,
        num_regions: int = 16,
        stylization: StylizationKind = "srsm",
        generator_channels: tuple[int, ...] = (64, 128, 256, 256, 256),
        region_level: int = 3,
        stylize_levels: tuple[int, ...] = (3, 4),
        model_path: str = "synthetic",
        image_size: int = 256,
        uv_size: int = 256,
        loss_weights: FusionLossWeights | None = None,
        identity_weights: str | None = None,
        identity_backbone: Literal["arcface", "facenet"] = "arcface",
        arcface_depth: int = 50,
        camera_distance: float = 10.0,
        heatmap_sigma: float = 2.0,
        lr: float = 5e-5,
        betas: tuple[float, float] = (0.9, 0.999),
        init_ckpt: str | None = None,
        allow_random_init: bool = False,
        log_images_every_n_steps: int = 500,
        max_logged_images: int = 8,
    ) -> None:
        super().__init__()
        from dualstream.data import load_topology

        if isinstance(loss_weights, dict):
            loss_weights = FusionLossWeights(**loss_weights)
        self.automatic_optimization = False
        self.weights = loss_weights if loss_weights is not None else FusionLossWeights()
        self.lr, self.betas = float(lr), tuple(betas)
        self.image_size, self.uv_size, self.heatmap_sigma = int(image_size), int(uv_size), float(heatmap_sigma)
        topology = load_topology(model_path)
        expression_gain = carried_expression_gain(init_ckpt, expression_gain)
        self.codec = topology.codec(uv_size, image_size, expression_gain)
        self.geometry = geometry if geometry is not None else build_geometry_stream(
            model_path, uv_size, **(geometry_args or {}))
        self.generator = generator if generator is not None else TextureGenerator(
            channels=generator_channels, num_regions=num_regions, stylization=stylization,
            region_level=region_level, stylize_levels=stylize_levels)
        self.albedo_mapper = AlbedoMapper(load_model("bfm", model_path), uv_size)
        self.fusion = Fusion(topology.faces, topology.uv, topology.faces_uv, topology.keypoints, image_size,
                             camera_distance)
        self.identity = self._identity_loss(identity_weights, identity_backbone, arcface_depth)
        require_init(init_ckpt, allow_random_init, "end-to-end", "texture")
        if init_ckpt is not None:
            found = load_stage_checkpoint({"geometry": self.geometry, "generator": self.generator}, init_ckpt)
            if "geometry" not in found:
                warn_missing_weights("model.init_args.init_ckpt", "the geometry stream (stage 1, carried by the "
                                     "texture stage's checkpoint)", f"{init_ckpt} holds no geometry.* weights (the "
                                     "texture stage ran without its init_ckpt): the geometry stream starts RANDOM",
                                     logger=__name__)
        self.image_grid = ImageGridLogger(log_images_every_n_steps, max_logged_images)
        self.guarded_step = GuardedStep.for_lightning(self, name="DualStream end-to-end", logger=__name__)
        self._warned_hull = False
        self.save_hyperparameters(ignore=["geometry", "generator", "loss_weights"])
        self.save_hyperparameters({"loss_weights": asdict(self.weights), "expression_gain": expression_gain})

    def _identity_loss(self, weights_path: str | None, backbone: str, depth: int) -> IdentityLoss | None:
        if not self.weights.identity:
            return None
        if weights_path is None:
            warn_missing_weights("model.init_args.identity_weights", f"the {backbone} face-recognition network "
                                 "(DualStream identity loss, Eq. 21)", "the identity loss runs on a frozen RANDOM "
                                 "network: its cosine distances carry no identity information", logger=__name__)
        return IdentityLoss(backbone, weights_path, allow_random=weights_path is None, arcface_depth=depth)

    # ---------------------------------------------------------------------------------------------- the model
    def forward(self, image: Tensor, landmarks_pix: Tensor) -> tuple[FusionOutput, object]:
        """Both streams and the fusion: ``(FusionOutput, GeometryOutput)`` for (B, 3, H, W) crops and their
        (B, 68, 2) landmarks (pixels)."""
        if image.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(f"DualStream was built for {self.image_size}x{self.image_size} crops "
                             f"(model.init_args.image_size), got {tuple(image.shape[-2:])}")
        geo = self.geometry(image)
        pos_id, pos_full = self.codec.decode(geo.a_id, geo.a_exp)  # Eq. 2, pixels
        verts, verts_id = self.codec.to_vertices(pos_full), self.codec.to_vertices(pos_id)
        albedo_map = self.albedo_mapper(geo.albedo)
        heat = landmark_heatmaps(landmarks_pix.to(image), tuple(image.shape[2:]), self.heatmap_sigma)
        texture, regions = self.generator(albedo_map, image, heat)
        render, lmk = self.fusion(verts, texture, geo.sh)  # Eq. 19
        return FusionOutput(verts=verts, verts_id=verts_id, texture=texture, albedo_map=albedo_map,
                            regions=regions, render=render, landmarks_pix=lmk), geo

    def _mask(self, batch) -> Tensor:
        mask, source = visibility_mask(self.image_size, getattr(batch, "visibility", None), batch.landmarks)
        if source == "landmark_hull" and not self._warned_hull:
            self._warned_hull = True
            log.warning("DualStream: the batches carry no visibility mask; Eq. 20 uses the hull of the 68 "
                        "landmarks (the face-parser fallback: occluders inside the face are not excluded)")
        return mask

    # ---------------------------------------------------------------------------------------------- training
    def configure_optimizers(self):
        params = [p for p in [*self.geometry.parameters(), *self.generator.parameters()] if p.requires_grad]
        return torch.optim.Adam(params, lr=self.lr, betas=self.betas)

    def training_step(self, batch, batch_idx: int) -> None:
        out, geo = self(batch.image, batch.landmarks)
        losses = fusion_losses(batch.image, out, batch.landmarks, self._mask(batch), self.identity, self.weights)
        losses["total"] = self.guarded_step(self.optimizers(), losses, self.weights).total
        b = batch.image.shape[0]
        for name, value in losses.items():
            self.log(f"train/loss_{name}", value.detach(), on_step=True, on_epoch=False, batch_size=b)
        self.log("train/skipped_steps", float(self.guarded_step.skipped), on_step=True, on_epoch=False,
                 batch_size=b)
        writer = tensorboard_writer(self.logger, self.global_rank)
        if self.image_grid.due(batch_idx, writer):
            self.image_grid.log(writer, "train/dualstream", self.panels(batch.image, out, geo), self.global_step)

    def panels(self, image: Tensor, out: FusionOutput, geo) -> list[Tensor]:
        """Input, identity ASM, expression ASM, albedo map, stylised texture, render over the input (at H x W)."""
        size = tuple(image.shape[2:])

        def fit(x: Tensor) -> Tensor:
            return F.interpolate(x.detach(), size=size, mode="bilinear", align_corners=False)

        def normalised(x: Tensor) -> Tensor:
            lo = x.flatten(2).amin(2)[..., None, None]
            hi = x.flatten(2).amax(2)[..., None, None]
            return (x - lo) / (hi - lo).clamp_min(1e-6)

        a_exp = geo.a_exp if geo.a_exp is not None else torch.zeros_like(geo.a_id)
        render = out.render
        composite = render.image * render.mask + image * (1 - render.mask)
        return [image, fit(normalised(geo.a_id)), fit(normalised(a_exp)), fit(out.albedo_map), fit(out.texture),
                composite.detach()]

    def validation_step(self, batch, batch_idx: int) -> None:
        """Fusion losses and, with ASM ground truth, the vertex error (pixels) of the full face."""
        out, _ = self(batch.image, batch.landmarks)
        losses = fusion_losses(batch.image, out, batch.landmarks, self._mask(batch), self.identity, self.weights)
        b = batch.image.shape[0]
        for name, value in losses.items():
            self.log(f"val/loss_{name}", value, batch_size=b, sync_dist=True)
        if getattr(batch, "asm_id", None) is not None:
            target = self.codec.to_vertices(batch.asm_full)
            self.log("val/vertex_error_px", (out.verts - target).norm(dim=-1).mean(), batch_size=b, sync_dist=True)
