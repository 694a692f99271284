"""Image grids in TensorBoard at a cadence, from rank 0 only.

A recipe's panels (input, masked input, render, output, ...) are expensive to assemble, so it asks first::

    writer = tensorboard_writer(self.logger, self.global_rank)
    if self.image_grid.due(batch_index, writer):
        self.image_grid.log(writer, "train/images", [batch.image, output], self.global_step)

:func:`tensorboard_writer` duck-types the logger (anything whose ``experiment`` has ``add_image``, i.e. a
``torch.utils.tensorboard.SummaryWriter``, as Lightning's ``TensorBoardLogger`` holds), so nothing here imports
Lightning.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from facelab.viz import rows_grid

__all__ = ["ImageGridLogger", "tensorboard_writer"]


def tensorboard_writer(logger, rank: int = 0):
    """The ``SummaryWriter`` behind ``logger`` on rank 0; None elsewhere, without a logger, or for loggers that
    take no images (CSV, ...)."""
    if logger is None or rank != 0:
        return None
    writer = getattr(logger, "experiment", None)
    return writer if callable(getattr(writer, "add_image", None)) else None


class ImageGridLogger:
    """Rows of image panels as one TensorBoard image every ``every_n_steps`` steps.

    Args:
        every_n_steps: cadence in the caller's counter (e.g. training batches); 0 never logs.
        max_images: samples (columns) per grid.
    """

    def __init__(self, every_n_steps: int = 500, max_images: int = 8) -> None:
        if every_n_steps < 0 or max_images < 1:
            raise ValueError(f"need every_n_steps >= 0 and max_images >= 1, got {every_n_steps}, {max_images}")
        self.every_n_steps, self.max_images = int(every_n_steps), int(max_images)

    def due(self, step: int, writer) -> bool:
        """Whether a grid is wanted at counter value ``step`` (0, n, 2n, ...) with this ``writer`` (None: never)."""
        n = self.every_n_steps
        return writer is not None and n > 0 and step % n == 0

    def log(self, writer, tag: str, panels: Sequence[Tensor], global_step: int) -> None:
        """Write panels ``[(B, C, H, W), ...]`` (values in [0, 1], clamped) as rows of one image (no-op without a
        writer or panels)."""
        if writer is None or not panels:
            return
        grid = rows_grid(*(p.detach().float().clamp(0, 1).cpu() for p in panels), max_images=self.max_images)
        writer.add_image(tag, grid, global_step)
