"""What manual-optimisation recipes repeat, in plain PyTorch (Lightning glue only in :mod:`.callbacks`).

* :mod:`.steps`: :class:`GuardedStep`, one optimizer step of weighted loss terms that never steps on a
  non-finite loss or gradient (warned, counted) nor when no active term has a graph; zero-weight terms never
  enter the graph (:func:`weighted_total`).
* :mod:`.ema`: :class:`EMA` of a network's weights (decay with warm-up, swap-in for evaluation, state dict).
* :mod:`.schedule`: :class:`EpochCosine`, the per-epoch restarted cosine, and helpers to set its period and step
  schedulers.
* :mod:`.images`: :class:`ImageGridLogger`, TensorBoard image grids at a cadence on rank 0.
* :mod:`.freeze`: frozen sub-networks that stay in eval mode, frozen BatchNorm statistics, snapshots of them.
* :mod:`.callbacks`: :class:`~facelab.training.callbacks.EMACallback` (Lightning).
"""

from facelab.training.ema import EMA, half_life_decay
from facelab.training.freeze import (
    freeze,
    freeze_norm_statistics,
    is_frozen,
    kept_norm_statistics,
    norm_statistics,
    restore_frozen_modes,
    restore_norm_statistics,
    unfreeze,
)
from facelab.training.images import ImageGridLogger, tensorboard_writer
from facelab.training.schedule import EpochCosine, epoch_cosine, set_steps_per_epoch, step_schedulers
from facelab.training.steps import GuardedStep, StepOutcome, active_terms, is_rank_zero, weighted_total

__all__ = [
    "EMA",
    "EpochCosine",
    "GuardedStep",
    "ImageGridLogger",
    "StepOutcome",
    "active_terms",
    "epoch_cosine",
    "freeze",
    "freeze_norm_statistics",
    "half_life_decay",
    "is_frozen",
    "is_rank_zero",
    "kept_norm_statistics",
    "norm_statistics",
    "restore_frozen_modes",
    "restore_norm_statistics",
    "set_steps_per_epoch",
    "step_schedulers",
    "tensorboard_writer",
    "unfreeze",
    "weighted_total",
]
