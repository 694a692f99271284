"""Image grids: which loggers take them (rank 0, TensorBoard only), the cadence, the grid written."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from facelab.training import ImageGridLogger, tensorboard_writer


class FakeWriter:
    def __init__(self) -> None:
        self.images: list[tuple[str, torch.Tensor, int]] = []

    def add_image(self, tag: str, image: torch.Tensor, step: int) -> None:
        self.images.append((tag, image, step))


class FakeLogger:
    experiment = FakeWriter()


def test_writer_only_on_rank_zero_and_for_image_loggers(tmp_path):
    tb = TensorBoardLogger(tmp_path, name="tb")
    assert tensorboard_writer(tb, 0) is tb.experiment
    assert tensorboard_writer(tb, 1) is None
    assert tensorboard_writer(CSVLogger(tmp_path), 0) is None
    assert tensorboard_writer(None) is None
    assert isinstance(tensorboard_writer(FakeLogger()), FakeWriter)


def test_cadence_and_grid():
    grids = ImageGridLogger(every_n_steps=3, max_images=2)
    writer = FakeWriter()
    assert [s for s in range(8) if grids.due(s, writer)] == [0, 3, 6]
    assert not grids.due(0, None) and not ImageGridLogger(0).due(0, writer)
    panels = [torch.full((4, 3, 8, 8), 2.0), torch.zeros(4, 1, 8, 8)]  # out-of-range values are clamped
    grids.log(writer, "train/images", panels, global_step=7)
    tag, image, step = writer.images[0]
    assert (tag, step) == ("train/images", 7)
    assert image.shape == (3, 2 * 8 + 3 * 2, 2 * 8 + 3 * 2)  # 2 rows x 2 columns, padding 2
    assert image.max() == 1.0
    grids.log(writer, "none", [], 8)
    grids.log(None, "none", panels, 8)
    assert len(writer.images) == 1
    with pytest.raises(ValueError):
        ImageGridLogger(every_n_steps=-1)


def test_grid_reaches_tensorboard(tmp_path):
    tb = TensorBoardLogger(tmp_path, name="tb")
    ImageGridLogger(1).log(tensorboard_writer(tb), "val/images", [torch.rand(2, 3, 16, 16)], 5)
    tb.experiment.flush()
    events = EventAccumulator(tb.log_dir)
    events.Reload()
    (image,) = events.Images("val/images")
    assert image.step == 5 and image.width > 16
