"""``Detailed3DMMModule``: training the Detailed3DMM encoder through the frozen DNPM generator (paper Eq. 5-7).

    L_pixel = || I - G(E(w_id, w_exp) + w_mean) ||_1                          (Eq. 5)
    L_lpips = || F(I) - F(G(E(w_id, w_exp) + w_mean)) ||_2   (AlexNet LPIPS) (Eq. 6)
    L_3d    = lambda_1 L_pixel + lambda_2 L_lpips,  lambda = (1, 0.05)       (Eq. 7)

Adam, lr 5e-4 in the first epoch then cosine decay over the others (``max_epochs``: the paper's 100), batch 8
(the DataModule's). The generator comes from a :class:`dnpm.module.DnpmModule` checkpoint (``init_ckpt``; its EMA
generator, loaded with ``weights_only=True``) and is frozen; it is part of this module's state, so this module's
checkpoint alone rebuilds the whole Detailed3DMM (:func:`load_detailed3dmm`). Without ``init_ckpt`` the module
refuses to start unless ``allow_random_init`` (then a random generator, with a loud WARNING: for tests only).

LPIPS's AlexNet trunk needs local weights (``lpips_weights``: torchvision's ``alexnet-owt-7be5be79.pth``); without
them the trunk is a frozen random AlexNet and a WARNING names the key (the term then measures little).

Validation logs the Table I metrics on held-out maps, PSNR and SSIM (synchronised over ranks), with the data range
of the FaceScape encoding (2: values in [-1, 1]) converted to the batch's units.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from lightning.pytorch import LightningModule
from torch import Tensor

from dnpm.detailed3dmm import (
    FACESCAPE_MM_PER_UNIT,
    Detailed3DMM,
    EncoderInput,
    bilinear_model,
    colorize_displacement,
    map_lpips,
)
from dnpm.module import maps_of_batch
from facelab.errors import AssetFormatError
from facelab.io.weights import read_checkpoint
from facelab.log import get_logger, warn_missing_weights
from facelab.losses import LPIPS
from facelab.metrics import psnr, ssim
from facelab.nn.stylegan2 import CheckpointMismatchError, Generator
from facelab.training import tensorboard_writer
from facelab.viz import rows_grid

__all__ = ["Detailed3DMMLossWeights", "Detailed3DMMModule", "generator_config", "load_detailed3dmm",
           "load_generator"]

log = get_logger(__name__)

#: The generator constructor arguments a DnpmModule checkpoint's hyper-parameters carry.
_GENERATOR_KEYS = ("resolution", "channels", "z_dim", "w_dim", "mapping_layers", "channel_base", "channel_max",
                   "mapping_lr_multiplier")


@dataclass
class Detailed3DMMLossWeights:
    """Eq. 7's weights.

    Attributes:
        pixel: lambda_1 of the L1 term (Eq. 5).
        lpips: lambda_2 of the AlexNet LPIPS term (Eq. 6).
    """

    pixel: float = 1.0
    lpips: float = 0.05


def generator_config(hparams: dict[str, Any]) -> dict[str, Any]:
    """The :class:`facelab.nn.stylegan2.Generator` arguments in a DnpmModule's hyper-parameters."""
    missing = [k for k in _GENERATOR_KEYS if k not in hparams]
    if missing:
        raise AssetFormatError(f"not a DNPM checkpoint: its hyper-parameters lack {missing}")
    return {k: hparams[k] for k in _GENERATOR_KEYS}


def load_generator(path: str, resolution: int | None = None, config_key: str = "model.init_args.init_ckpt"
                   ) -> tuple[Generator, dict[str, Any], float]:
    """The EMA generator of a :class:`dnpm.module.DnpmModule` checkpoint (``weights_only=True``).

    Args:
        path: the Lightning checkpoint.
        resolution: the map side the caller expects (None: the checkpoint's).
        config_key: the option that named ``path`` (for the errors).

    Returns:
        The generator (eval mode), its constructor arguments, and the checkpoint's millimetres per map unit.

    Raises:
        MissingAssetError: no such file. AssetFormatError: not a DNPM checkpoint. CheckpointMismatchError: a
        generator of another resolution than ``resolution``.
    """
    ckpt = read_checkpoint(path, what="DNPM generator checkpoint (a DnpmModule checkpoint)", config_key=config_key)
    config = generator_config(ckpt.get("hyper_parameters", {}))
    if resolution is not None and int(config["resolution"]) != int(resolution):
        raise CheckpointMismatchError(f"{path} (set by {config_key}) holds a {config['resolution']}^2 DNPM generator "
                                      f"but {resolution}^2 maps were asked for: train DNPM at this resolution, or "
                                      "set the resolution to the checkpoint's")
    state = ckpt.get("state_dict", {})
    sub = {k[len("generator_ema."):]: v for k, v in state.items() if k.startswith("generator_ema.")}
    if not sub:
        raise AssetFormatError(f"{path} (set by {config_key}): no generator_ema.* weights in its state_dict")
    generator = Generator(**config)
    generator.load_state_dict(sub, strict=True)
    scale = float(state.get("map_scale_mm", torch.tensor(FACESCAPE_MM_PER_UNIT)))
    return generator.eval().requires_grad_(False), config, scale


class Detailed3DMMModule(LightningModule):
    """Detailed3DMM's encoder training (Eq. 5-7) through a frozen DNPM generator.

    Args:
        init_ckpt: the trained DnpmModule checkpoint (its EMA generator). Required unless ``allow_random_init``.
        allow_random_init: permit a random generator without ``init_ckpt`` (tests; a WARNING).
        resolution: map side; must match the checkpoint's generator.
        generator: the generator's constructor arguments when it is random (``allow_random_init``) or restored
            from this module's own checkpoint (filled in from ``init_ckpt`` otherwise).
        map_scale_mm: millimetres per generator unit (the ``s`` of Eq. 4); None: the DNPM checkpoint's.
        model_path: the bilinear model (``"synthetic"``: the stand-in; or FaceScape's ``.npz``).
        encoder_input: ``"params"`` (E_id,exp) or the Table I baselines ``"mesh1700"`` / ``"mesh5000"``.
        hidden: the encoder's five layer widths.
        subdivisions: midpoint subdivisions of the proxy mesh for the detailed mesh (Eq. 4).
        loss_weights: Eq. 7's lambdas.
        lpips_weights: torchvision AlexNet state dict for LPIPS (None: a frozen random trunk and a WARNING).
        lr: Adam learning rate (5e-4), cosine-decayed per epoch over ``trainer.max_epochs``.
        log_images_every_n_steps: training batches between TensorBoard grids (0: never).
        max_logged_images: samples per grid.
    """

    def __init__(
        self,
        init_ckpt: str | None = None,
        allow_random_init: bool = False,
        resolution: int = 32,
        generator: dict[str, Any] | None = None,
        map_scale_mm: float | None = None,
        model_path: str = "synthetic",
        encoder_input: EncoderInput = "params",
        hidden: Sequence[int] = (512, 512, 512, 512, 512),
        subdivisions: int = 1,
        loss_weights: Detailed3DMMLossWeights | None = None,
        lpips_weights: str | None = None,
        lr: float = 5e-4,
        log_images_every_n_steps: int = 200,
        max_logged_images: int = 8,
    ) -> None:
        super().__init__()
        if init_ckpt is not None:
            gen, config, ckpt_scale = load_generator(init_ckpt, resolution)
            map_scale_mm = ckpt_scale if map_scale_mm is None else map_scale_mm
        else:
            if not allow_random_init:
                raise ValueError("Detailed3DMM trains its encoder through a pre-trained DNPM generator: set "
                                 "`--model.init_args.init_ckpt PATH` to a DnpmModule checkpoint (configs/dnpm.yaml), "
                                 "or "
                                 "`--model.init_args.allow_random_init true` for a random generator (tests only)")
            config = dict(generator or {"resolution": resolution})
            config.setdefault("resolution", resolution)
            if int(config["resolution"]) != int(resolution):
                raise CheckpointMismatchError(f"generator resolution {config['resolution']} != resolution "
                                              f"{resolution}")
            gen = Generator(**config)
            warn_missing_weights("model.init_args.init_ckpt", "the DNPM generator (Detailed3DMM)",
                                 "the encoder trains through a RANDOM generator (allow_random_init: tests only): its "
                                 "maps mean nothing", logger=__name__)
        map_scale_mm = FACESCAPE_MM_PER_UNIT if map_scale_mm is None else float(map_scale_mm)
        self.weights = loss_weights or Detailed3DMMLossWeights()
        # the checkpoint of this module rebuilds everything from these (init_ckpt is not needed again)
        self.save_hyperparameters({"generator": dict(config), "map_scale_mm": map_scale_mm, "init_ckpt": None,
                                   "allow_random_init": True, "resolution": int(resolution), "model_path": model_path,
                                   "encoder_input": encoder_input, "hidden": [int(h) for h in hidden],
                                   "subdivisions": int(subdivisions), "lpips_weights": lpips_weights,
                                   "loss_weights": {"pixel": self.weights.pixel, "lpips": self.weights.lpips},
                                   "lr": float(lr), "log_images_every_n_steps": int(log_images_every_n_steps),
                                   "max_logged_images": int(max_logged_images)})
        self.model = Detailed3DMM(gen, bilinear_model(model_path), encoder_input, hidden, map_scale_mm, subdivisions)
        self.lpips = None
        if self.weights.lpips:
            self.lpips = LPIPS("alex", trunk_weights_path=lpips_weights, allow_random=lpips_weights is None,
                               input_range="signed")
            if lpips_weights is None:
                warn_missing_weights("model.init_args.lpips_weights", "AlexNet (LPIPS, Eq. 6)",
                                     f"the LPIPS term (weight {self.weights.lpips:g}) runs on a frozen RANDOM AlexNet",
                                     logger=__name__)
        self.map_scale_mm = map_scale_mm
        self.lr = float(lr)
        self.log_images_every_n_steps, self.max_logged_images = int(log_images_every_n_steps), int(max_logged_images)

    # ------------------------------------------------------------------------------------------------ pieces
    def _batch(self, batch) -> tuple[Tensor, Tensor, Tensor]:
        maps, scale = maps_of_batch(batch)
        res = self.model.generator.resolution
        if maps.shape[1:] != (1, res, res):
            raise ValueError(f"Detailed3DMM's generator makes (1, {res}, {res}) maps, the batch has "
                             f"{tuple(maps.shape[1:])}")
        target = maps * (scale / self.map_scale_mm)  # into the generator's units
        return target, batch.identity.to(maps), batch.expression.to(maps)

    def losses(self, target: Tensor, identity: Tensor, expression: Tensor) -> tuple[dict[str, Tensor], Tensor]:
        """Eq. 5-6 terms and the generated maps (B, 1, S, S)."""
        pred = self.model.generate(self.model.latents(identity, expression))
        losses = {"pixel": (pred - target).abs().mean()}  # Eq. 5
        if self.lpips is not None:
            losses["lpips"] = map_lpips(self.lpips, pred, target)  # Eq. 6
        return losses, pred

    def training_step(self, batch, batch_idx: int) -> Tensor:
        target, identity, expression = self._batch(batch)
        losses, pred = self.losses(target, identity, expression)
        total = sum(getattr(self.weights, k) * v for k, v in losses.items())  # Eq. 7
        b = target.shape[0]
        for name, value in losses.items():
            self.log(f"train/loss_{name}", value, on_step=True, on_epoch=False, sync_dist=True, batch_size=b)
        self.log("train/loss", total, on_step=True, on_epoch=False, prog_bar=True, sync_dist=True, batch_size=b)
        n = self.log_images_every_n_steps
        writer = tensorboard_writer(self.logger, self.global_rank)
        if writer is not None and n > 0 and batch_idx % n == 0:
            span = float(target.abs().amax())
            k = self.max_logged_images
            grid = rows_grid(colorize_displacement(target[:k], span), colorize_displacement(pred[:k].detach(), span),
                             max_images=k)
            writer.add_image("train/maps_target_vs_generated", grid, self.global_step)
        return total

    def validation_step(self, batch, batch_idx: int) -> None:
        target, identity, expression = self._batch(batch)
        losses, pred = self.losses(target, identity, expression)
        span = 2.0  # the FaceScape encoding's [-1, 1], in generator units times this module's scale
        span = span * FACESCAPE_MM_PER_UNIT / self.map_scale_mm
        b = target.shape[0]
        self.log("val/psnr", psnr(pred, target, data_range=span).mean(), sync_dist=True, batch_size=b)
        self.log("val/ssim", ssim(pred, target, data_range=span).mean(), sync_dist=True, batch_size=b)
        self.log("val/loss_pixel", losses["pixel"], sync_dist=True, batch_size=b)

    def configure_optimizers(self):
        opt = torch.optim.Adam(self.model.encoder.parameters(), lr=self.lr)
        epochs = max(1, int(self.trainer.max_epochs or 1)) if self._trainer is not None else 1

        def cosine(epoch: int) -> float:  # lr 5e-4 in the first epoch, cosine decay over the rest
            return 0.5 * (1.0 + math.cos(math.pi * min(epoch, epochs) / epochs))

        return {"optimizer": opt, "lr_scheduler": {"scheduler": torch.optim.lr_scheduler.LambdaLR(opt, cosine),
                                                   "interval": "epoch"}}

    def train(self, mode: bool = True) -> Detailed3DMMModule:
        super().train(mode)
        self.model.generator.eval()
        return self


def load_detailed3dmm(path: str, config_key: str = "--ckpt") -> Detailed3DMM:
    """The whole :class:`dnpm.detailed3dmm.Detailed3DMM` (encoder + frozen generator) from one
    :class:`Detailed3DMMModule` checkpoint (``weights_only=True``)."""
    ckpt = read_checkpoint(path, what="Detailed3DMM checkpoint (a Detailed3DMMModule checkpoint)",
                           config_key=config_key)
    hp = ckpt.get("hyper_parameters", {})
    if "generator" not in hp or "encoder_input" not in hp:
        raise AssetFormatError(f"{path} (set by {config_key}) is not a Detailed3DMM checkpoint (no generator / "
                               "encoder settings in its hyper-parameters); a DNPM GAN checkpoint trains one with "
                               "configs/dnpm_detailed3dmm.yaml")
    gen = Generator(**hp["generator"])
    model = Detailed3DMM(gen, bilinear_model(hp.get("model_path", "synthetic")), hp["encoder_input"], hp["hidden"],
                         hp["map_scale_mm"], hp.get("subdivisions", 1))
    state = {k[len("model."):]: v for k, v in ckpt.get("state_dict", {}).items() if k.startswith("model.")}
    model.load_state_dict(state, strict=True)
    return model.eval()
