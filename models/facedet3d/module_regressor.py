"""``RegressorModule``: trains the detail regressor (:mod:`facedet3d.regressor`, the stand-in for FDS) on the
synthetic world, where every face's true UV displacement map is known.

Input ``T(I_x)`` with its visibility (:class:`facedet3d.data.FaceDetailBatch`), output the map at the texture's
resolution, compared with the true ``D(I_x)`` (resized to it) by an L1 over valid texels *seen* in the photo
(unseen texels carry no evidence) plus ``gradient_weight`` times the L1 of the finite-difference gradients (the
wrinkles are in the gradients). Validation reports the L1 beside the zero map and the training-mean map.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from torch import Tensor

from facedet3d.data import FaceDetailBatch
from facedet3d.module_deth import detail_image, masked_l1
from facedet3d.regressor import DetailRegressor
from facelab.training import ImageGridLogger, tensorboard_writer

__all__ = ["RegressorModule", "gradient_l1"]


def gradient_l1(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Masked L1 of the horizontal and vertical finite differences of (B, 1, S, S) maps."""
    def diffs(x: Tensor) -> tuple[Tensor, Tensor]:
        return x[..., :, 1:] - x[..., :, :-1], x[..., 1:, :] - x[..., :-1, :]

    (px, py), (tx, ty) = diffs(pred), diffs(target)
    mx, my = mask[..., :, 1:] * mask[..., :, :-1], mask[..., 1:, :] * mask[..., :-1, :]
    return masked_l1(px, tx, mx) + masked_l1(py, ty, my)


class RegressorModule(LightningModule):
    """Supervised training of :class:`DetailRegressor`.

    Args:
        channels: UNet widths.
        max_displacement_mm: output scale.
        gradient_weight: weight of :func:`gradient_l1`.
        texture_size: side of the input textures (and of the training-mean map of the validation baseline).
        lr: Adam learning rate.
        log_images_every_n_steps: TensorBoard grids (texture, prediction, truth).
    """

    def __init__(self, channels: list[int] | None = None, max_displacement_mm: float = 3.0,
                 gradient_weight: float = 1.0, texture_size: int = 256, lr: float = 2e-4,
                 log_images_every_n_steps: int = 500) -> None:
        super().__init__()
        channels = list(channels or [32, 64, 128, 256])
        self.save_hyperparameters()
        self.hparams["channels"] = channels
        self.regressor = DetailRegressor(channels=channels, max_displacement_mm=max_displacement_mm)
        self.register_buffer("mean_map", torch.zeros(1, texture_size, texture_size))
        self.register_buffer("mean_count", torch.zeros(()))
        self.image_grid = ImageGridLogger(log_images_every_n_steps, max_images=4)

    def configure_optimizers(self):
        return torch.optim.Adam(self.regressor.parameters(), lr=self.hparams.lr, betas=(0.9, 0.999))

    def _targets(self, batch: FaceDetailBatch) -> tuple[Tensor, Tensor]:
        """The true map and its loss mask at the texture's resolution."""
        size = batch.texture.shape[-1]
        detail, mask = batch.detail, batch.detail_mask
        if detail.shape[-1] != size:
            detail = F.interpolate(detail, size=(size, size), mode="bilinear", align_corners=False)
            mask = (F.interpolate(mask, size=(size, size), mode="bilinear", align_corners=False) > 0.99).float()
        return detail, mask * batch.texture_mask

    def losses(self, batch: FaceDetailBatch) -> tuple[dict[str, Tensor], Tensor]:
        pred = self.regressor(batch.texture, batch.texture_mask)
        target, mask = self._targets(batch)
        return {"l1": masked_l1(pred, target, mask), "gradient": gradient_l1(pred, target, mask)}, pred

    def training_step(self, batch: FaceDetailBatch, batch_idx: int):
        losses, pred = self.losses(batch)
        self._update_mean(self._targets(batch)[0])
        loss = losses["l1"] + self.hparams.gradient_weight * losses["gradient"]
        b = batch.texture.shape[0]
        for name, value in losses.items():
            self.log(f"train/loss_{name}", value, on_step=True, on_epoch=False, batch_size=b)
        writer = tensorboard_writer(self.logger, self.global_rank)
        if self.image_grid.due(batch_idx, writer):
            s = self.hparams.max_displacement_mm / 2
            self.image_grid.log(writer, "train/texture_prediction_truth",
                                [batch.texture, detail_image(pred.detach(), s),
                                 detail_image(self._targets(batch)[0], s)], self.global_step)
        return loss

    def _update_mean(self, target: Tensor) -> None:
        """Running mean of the training maps (the mean-map baseline)."""
        if target.shape[1:] != self.mean_map.shape:
            raise ValueError(f"textures of side {target.shape[-1]} but texture_size={self.mean_map.shape[-1]}")
        total = self.mean_count + target.shape[0]
        self.mean_map.mul_(self.mean_count / total).add_(target.detach().sum(0) / total)
        self.mean_count.fill_(float(total))

    @torch.no_grad()
    def evaluate(self, batch: FaceDetailBatch) -> dict[str, Tensor]:
        """L1 (mm, seen valid texels) of the prediction, the zero map and the training-mean map."""
        pred = self.regressor(batch.texture, batch.texture_mask)
        target, mask = self._targets(batch)
        return {"l1": masked_l1(pred, target, mask), "l1_zero": masked_l1(torch.zeros_like(target), target, mask),
                "l1_mean_map": masked_l1(self.mean_map.expand_as(target), target, mask)}

    def validation_step(self, batch: FaceDetailBatch, batch_idx: int) -> None:
        for name, value in self.evaluate(batch).items():
            self.log(f"val/{name}", value, on_step=False, on_epoch=True, sync_dist=True,
                     batch_size=batch.texture.shape[0])
