"""Lightning glue for :mod:`facelab.training` (the only module of the package that imports Lightning).

:class:`EMACallback` keeps an :class:`~facelab.training.ema.EMA` of one sub-network of the LightningModule
(``pl_module.<attribute>``), evaluates with it, and stores it in checkpoints::

    trainer:
      callbacks:
        - class_path: facelab.training.callbacks.EMACallback
          init_args: {attribute: generator, decay: 0.999}
"""

from __future__ import annotations

import contextlib
from typing import Any, Literal

from lightning.pytorch import Callback, LightningModule, Trainer
from torch import nn

from facelab.training.ema import EMA

__all__ = ["EMACallback"]


class EMACallback(Callback):
    """EMA of ``pl_module.<attribute>``: updated after every training batch that stepped an optimizer; validation
    and test run with the averaged weights (the trained ones are back before any checkpoint is written); the
    average is saved in and restored from checkpoints (callback state).

    Args:
        attribute: the sub-network's attribute name on the LightningModule (e.g. ``generator``).
        decay, warmup, rampup, buffers: see :class:`~facelab.training.ema.EMA`.
        evaluate_with_ema: swap the average in for validation and test.
    """

    def __init__(self, attribute: str = "generator", decay: float = 0.999,
                 warmup: Literal["tf", "rampup", "none"] = "tf", rampup: float = 0.05, buffers: bool = True,
                 evaluate_with_ema: bool = True) -> None:
        self.attribute, self.evaluate_with_ema = attribute, evaluate_with_ema
        self._ema_kwargs = dict(decay=decay, warmup=warmup, rampup=rampup, buffers=buffers)
        self.ema: EMA | None = None
        self._pending: dict | None = None
        self._last_step = -1
        self._swap: contextlib.ExitStack | None = None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(attribute=self.attribute)

    def _network(self, pl_module: LightningModule) -> nn.Module:
        network = getattr(pl_module, self.attribute, None)
        if not isinstance(network, nn.Module):
            raise ValueError(f"EMACallback: {type(pl_module).__name__}.{self.attribute} is not an nn.Module "
                             "(set the callback's `attribute` to the network to average)")
        return network

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self.ema is None:
            self.ema = EMA(self._network(pl_module), **self._ema_kwargs)
        if self._pending is not None:
            self.ema.load_state_dict(self._pending)
            self._pending = None

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if trainer.global_step != self._last_step:  # an optimizer stepped on this batch
            self._last_step = trainer.global_step
            self.ema.update(self._network(pl_module))

    def _swap_in(self, pl_module: LightningModule) -> None:
        if self.evaluate_with_ema and self.ema is not None and self._swap is None:
            self._swap = contextlib.ExitStack()
            self._swap.enter_context(self.ema.swapped(self._network(pl_module)))

    def _swap_out(self) -> None:
        if self._swap is not None:
            self._swap.close()
            self._swap = None

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._swap_in(pl_module)

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._swap_out()

    def on_test_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._swap_in(pl_module)

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._swap_out()

    def state_dict(self) -> dict[str, Any]:
        return {} if self.ema is None else {**self.ema.state_dict(), "last_step": self._last_step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not state_dict:
            return
        self._last_step = int(state_dict.get("last_step", -1))
        if self.ema is None:
            self._pending = dict(state_dict)
        else:
            self.ema.load_state_dict(state_dict)
