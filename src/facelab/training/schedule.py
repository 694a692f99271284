"""Learning-rate schedules of the recipes: a cosine restarted at every epoch (SMIRK supplementary §1.6).

``LambdaLR(optimizer, EpochCosine(...))`` anneals from the base lr to ``min_factor x`` base lr over each epoch and
restarts. The period is the epoch's scheduler-step count, which a LightningModule only knows once the trainer has
its loader: call :func:`set_steps_per_epoch` from ``on_train_epoch_start``. Manual-optimisation recipes step the
schedulers themselves (:func:`step_schedulers`, once per batch).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable

import torch
from torch.optim.lr_scheduler import LambdaLR, LRScheduler

from facelab.log import get_logger
from facelab.training.steps import is_rank_zero

__all__ = ["EpochCosine", "epoch_cosine", "set_steps_per_epoch", "step_schedulers"]

log = get_logger(__name__)

#: Steps per epoch used when the loader has no length: the cosine then stays at its start (a constant lr).
UNKNOWN_EPOCH_STEPS = 2**62


class EpochCosine:
    """Learning-rate factor for ``LambdaLR``: a cosine from 1 to ``min_factor`` over each epoch, then a restart.

    ``factor(k) = m + (1 - m) (1 + cos(pi t)) / 2`` with ``t = (k mod T) / T`` and ``T = steps_per_epoch``
    (SMIRK supplementary §1.6: "cosine-annealing, restarted at each epoch"; SGDR, Loshchilov & Hutter 2017, with a
    constant period). A callable object, so ``LambdaLR.state_dict`` saves ``steps_per_epoch`` in checkpoints.

    Args:
        steps_per_epoch: scheduler steps per epoch (:func:`set_steps_per_epoch` sets it at every epoch start).
        min_factor: the factor reached at the end of an epoch.
    """

    def __init__(self, steps_per_epoch: int = 1, min_factor: float = 0.0) -> None:
        self.steps_per_epoch, self.min_factor = max(1, int(steps_per_epoch)), float(min_factor)

    def __call__(self, step: int) -> float:
        t = (step % self.steps_per_epoch) / self.steps_per_epoch
        return self.min_factor + (1.0 - self.min_factor) * 0.5 * (1.0 + math.cos(math.pi * t))


def epoch_cosine(optimizer: torch.optim.Optimizer, min_factor: float = 0.0) -> LambdaLR:
    """``LambdaLR`` over :class:`EpochCosine` (period 1 until :func:`set_steps_per_epoch`)."""
    return LambdaLR(optimizer, EpochCosine(min_factor=min_factor))


def set_steps_per_epoch(schedulers: Iterable[LRScheduler], steps: float) -> int:
    """Set the period of every :class:`EpochCosine` among ``schedulers``' lambdas; returns the period used.

    Args:
        schedulers: ``LambdaLR`` schedulers (others are left alone).
        steps: scheduler steps this epoch (a LightningModule: ``trainer.num_training_batches`` when it steps once
            per batch); ``inf`` (a loader without length) keeps the lr constant, with a WARNING.
    """
    if not math.isfinite(steps):
        if is_rank_zero():
            log.warning("the training loader has no length: the per-epoch cosine cannot anneal, the learning rate "
                        "stays constant")
        steps = UNKNOWN_EPOCH_STEPS
    period = max(1, int(steps))
    for scheduler in schedulers:
        for fn in getattr(scheduler, "lr_lambdas", ()):
            if isinstance(fn, EpochCosine):
                fn.steps_per_epoch = period
    return period


def step_schedulers(schedulers: Iterable[LRScheduler]) -> None:
    """Step every scheduler once (a manual-optimisation recipe's per-batch schedule).

    Alternating recipes step a network's schedule on batches where its optimizer did not step; torch's warning
    about a scheduler stepped before its optimizer is expected there and silenced.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler")
        for scheduler in schedulers:
            scheduler.step()
