"""``RcanModule``: RCAN fine-tuned on detail-map patches (FaceDet3D Eq. 8).

``L_SR = L1(RCAN(D(I_x)^P_256), D(I_x)^P_1024)``: random high-resolution patches of full-resolution maps and their
area-downsampled versions (:class:`facedet3d.data.RcanPatchDataModule`), the L1 a masked mean over valid texels.
Adam (RCAN: lr 1e-4, betas (0.9, 0.999)), the learning rate halved every ``lr_halving_steps`` steps. Validation
reports the L1 beside the bilinear and bicubic up-sampling of the same low-resolution patch.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule

from facedet3d.data import DetailPatchBatch
from facedet3d.module_deth import detail_image, masked_l1
from facedet3d.rcan import RCAN
from facelab.io.weights import load_state_dict_strict, read_checkpoint
from facelab.training import ImageGridLogger, tensorboard_writer

__all__ = ["RcanModule", "load_rcan"]


class RcanModule(LightningModule):
    """Trains :class:`facedet3d.rcan.RCAN` with Eq. 8.

    Args:
        features, n_groups, n_blocks, reduction, scale, residual_upsample: :class:`RCAN` (paper 64, 10, 20, 16, 4).
        max_displacement_mm: map scale inside the network.
        lr: Adam learning rate (RCAN: 1e-4).
        betas: Adam betas.
        lr_halving_steps: halve the learning rate every this many steps (RCAN: every 2e5 iterations); 0: constant.
        log_images_every_n_steps: TensorBoard grids (low-res input, bicubic, RCAN, truth).
    """

    def __init__(self, features: int = 64, n_groups: int = 10, n_blocks: int = 20, reduction: int = 16, scale: int = 4,
                 residual_upsample: bool = True, max_displacement_mm: float = 3.0, lr: float = 1e-4,
                 betas: tuple[float, float] = (0.9, 0.999), lr_halving_steps: int = 200000,
                 log_images_every_n_steps: int = 500) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.rcan = RCAN(features=features, n_groups=n_groups, n_blocks=n_blocks, reduction=reduction, scale=scale,
                         max_displacement_mm=max_displacement_mm, residual_upsample=residual_upsample)
        self.image_grid = ImageGridLogger(log_images_every_n_steps, max_images=4)

    def configure_optimizers(self):
        hp = self.hparams
        opt = torch.optim.Adam(self.rcan.parameters(), lr=hp.lr, betas=tuple(hp.betas))
        if not hp.lr_halving_steps:
            return opt
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=hp.lr_halving_steps, gamma=0.5)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def training_step(self, batch: DetailPatchBatch, batch_idx: int):
        pred = self.rcan(batch.low)
        loss = masked_l1(pred, batch.high, batch.mask)  # Eq. 8
        self.log("train/loss_sr", loss, on_step=True, on_epoch=False, batch_size=batch.low.shape[0])
        writer = tensorboard_writer(self.logger, self.global_rank)
        if self.image_grid.due(batch_idx, writer):
            s = self.hparams.max_displacement_mm / 2
            up = F.interpolate(batch.low, scale_factor=self.hparams.scale, mode="nearest")
            self.image_grid.log(writer, "train/low_rcan_truth",
                                [detail_image(up, s), detail_image(pred.detach(), s), detail_image(batch.high, s)],
                                self.global_step)
        return loss

    @torch.no_grad()
    def evaluate_patches(self, batch: DetailPatchBatch) -> dict[str, torch.Tensor]:
        """L1 (mm) of RCAN and of the bilinear / bicubic answers on the same patches."""
        r = self.hparams.scale
        return {
            "l1": masked_l1(self.rcan(batch.low), batch.high, batch.mask),
            "l1_bilinear": masked_l1(F.interpolate(batch.low, scale_factor=r, mode="bilinear", align_corners=False),
                                     batch.high, batch.mask),
            "l1_bicubic": masked_l1(F.interpolate(batch.low, scale_factor=r, mode="bicubic", align_corners=False),
                                    batch.high, batch.mask),
        }

    def validation_step(self, batch: DetailPatchBatch, batch_idx: int) -> None:
        for name, value in self.evaluate_patches(batch).items():
            self.log(f"val/{name}", value, on_step=False, on_epoch=True, sync_dist=True, batch_size=batch.low.shape[0])


def load_rcan(path: str | os.PathLike, device: str | torch.device = "cpu") -> RCAN:
    """The RCAN of a ``RcanModule`` checkpoint (``torch.load(weights_only=True)``), in eval mode."""
    ckpt = read_checkpoint(path, what="RCAN checkpoint (configs/facedet3d_rcan.yaml)", config_key="--rcan")
    hp = dict(ckpt.get("hyper_parameters", {}))
    keep = ("features", "n_groups", "n_blocks", "reduction", "scale", "residual_upsample", "max_displacement_mm")
    net = RCAN(**{k: hp[k] for k in keep if k in hp})
    state = {k[len("rcan."):]: v for k, v in ckpt.get("state_dict", {}).items() if k.startswith("rcan.")}
    load_state_dict_strict(net, state, path, hint="a RcanModule checkpoint")
    return net.to(device).eval()
