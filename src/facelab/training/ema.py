"""Exponential moving average of a network's weights (Polyak averaging), as GAN generators are evaluated.

``shadow <- beta_t * shadow + (1 - beta_t) * theta`` after every optimizer step (StyleGAN2-ADA ``training_loop.py``
"G_ema"; StarGAN-v2 ``moving_average``, beta 0.999). Early updates would average the random initialisation in for
thousands of steps, so ``beta_t`` warms up:

* ``warmup="tf"``: ``beta_t = min(beta, (1 + t) / (10 + t))`` (``tf.train.ExponentialMovingAverage`` with
  ``num_updates``);
* ``warmup="rampup"``: StyleGAN2-ADA's ramp of the half-life, ``h_t = min(h, rampup * t)`` updates with
  ``h = log(0.5) / log(beta)``, ``beta_t = 0.5 ** (1 / h_t)`` (its ``ema_rampup=0.05`` with ``ema_kimg`` as the
  half-life; :func:`half_life_decay` converts a half-life in images to ``beta``);
* ``warmup="none"``: ``beta_t = beta``.

:class:`EMA` holds the shadow tensors (not a second module); :meth:`EMA.swapped` puts them into the network for
evaluation and restores the trained weights afterwards; :meth:`EMA.state_dict` goes into checkpoints
(:class:`facelab.training.callbacks.EMACallback` does all three for a LightningModule).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Literal

import torch
from torch import Tensor, nn

__all__ = ["EMA", "half_life_decay"]


def half_life_decay(half_life_images: float, batch_size: int) -> float:
    """Per-step ``beta`` of an EMA whose weight halves every ``half_life_images`` training images (StyleGAN2's
    ``ema_kimg * 1000``): ``0.5 ** (batch_size / half_life_images)``."""
    if half_life_images <= 0 or batch_size <= 0:
        raise ValueError(f"half-life and batch size must be positive, got {half_life_images}, {batch_size}")
    return 0.5 ** (batch_size / half_life_images)


class EMA:
    """Moving average of a module's floating parameters (and buffers).

    Args:
        module: the trained network (its parameters at construction start the average).
        decay: the target ``beta`` in ``[0, 1)``.
        warmup: ``"tf"``, ``"rampup"`` or ``"none"`` (module docstring).
        rampup: StyleGAN2-ADA's ``ema_rampup`` (``warmup="rampup"`` only).
        buffers: also average floating buffers (BatchNorm running statistics) and copy the others
            (``num_batches_tracked``); False: buffers are left to the network.

    Attributes:
        num_updates: :meth:`update` calls so far (the ``t`` of the warm-up).
    """

    def __init__(self, module: nn.Module, decay: float = 0.999, warmup: Literal["tf", "rampup", "none"] = "tf",
                 rampup: float = 0.05, buffers: bool = True) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {decay}")
        if warmup not in ("tf", "rampup", "none"):
            raise ValueError(f"warmup must be 'tf', 'rampup' or 'none', got {warmup!r}")
        if warmup == "rampup" and rampup <= 0:
            raise ValueError(f"rampup must be positive, got {rampup}")
        self.decay, self.warmup, self.rampup, self.buffers = float(decay), warmup, float(rampup), buffers
        self.num_updates = 0
        self.shadow: dict[str, Tensor] = {name: t.detach().clone() for name, t in self._tensors(module).items()}

    def _tensors(self, module: nn.Module) -> dict[str, Tensor]:
        tensors = {name: p for name, p in module.named_parameters() if p.is_floating_point()}
        if self.buffers:
            tensors.update(module.named_buffers())
        return tensors

    def decay_at(self, t: int) -> float:
        """``beta_t`` of update number ``t`` (0-based)."""
        if self.decay == 0.0 or self.warmup == "none":
            return self.decay
        if self.warmup == "tf":
            return min(self.decay, (1.0 + t) / (10.0 + t))
        half_life = math.log(0.5) / math.log(self.decay)
        ramped = min(half_life, self.rampup * t)
        return 0.0 if ramped <= 0 else 0.5 ** (1.0 / ramped)

    def _pairs(self, module: nn.Module) -> list[tuple[Tensor, Tensor]]:
        live = self._tensors(module)
        if live.keys() != self.shadow.keys():
            missing, extra = sorted(self.shadow.keys() - live.keys()), sorted(live.keys() - self.shadow.keys())
            raise ValueError(f"EMA of another module: missing {missing[:5]}, unexpected {extra[:5]}")
        pairs = []
        for name, tensor in live.items():
            shadow = self.shadow[name]
            if shadow.device != tensor.device or shadow.dtype != tensor.dtype:  # the network moved (e.g. to GPU)
                shadow = self.shadow[name] = shadow.to(tensor)
            pairs.append((shadow, tensor))
        return pairs

    @torch.no_grad()
    def update(self, module: nn.Module) -> float:
        """Average ``module``'s current weights in (after an optimizer step); returns the ``beta_t`` used."""
        beta = self.decay_at(self.num_updates)
        averaged, copied = [], []
        for shadow, live in self._pairs(module):
            (averaged if shadow.is_floating_point() else copied).append((shadow, live))
        if averaged:
            torch._foreach_lerp_([s for s, _ in averaged], [x.detach() for _, x in averaged], 1.0 - beta)
        for shadow, live in copied:
            shadow.copy_(live)
        self.num_updates += 1
        return beta

    @torch.no_grad()
    def copy_to(self, module: nn.Module) -> None:
        """Overwrite ``module``'s weights with the average."""
        for shadow, live in self._pairs(module):
            live.copy_(shadow)

    @contextlib.contextmanager
    def swapped(self, module: nn.Module) -> Iterator[nn.Module]:
        """``with ema.swapped(net): evaluate(net)``: the average inside, the trained weights back afterwards."""
        pairs = self._pairs(module)
        trained = [live.detach().clone() for _, live in pairs]
        self.copy_to(module)
        try:
            yield module
        finally:
            with torch.no_grad():
                for (_, live), saved in zip(pairs, trained):
                    live.copy_(saved)

    def state_dict(self) -> dict:
        """Shadow tensors and the update count (``torch.save``-able with ``weights_only=True``)."""
        return {"num_updates": self.num_updates, "decay": self.decay, "shadow": dict(self.shadow)}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`; the names and shapes must be this EMA's."""
        shadow = state["shadow"]
        if shadow.keys() != self.shadow.keys():
            raise ValueError(f"EMA state of another module: {sorted(shadow.keys() ^ self.shadow.keys())[:5]} differ")
        for name, tensor in shadow.items():
            if tensor.shape != self.shadow[name].shape:
                raise ValueError(f"EMA state: {name} is {tuple(tensor.shape)}, expected "
                                 f"{tuple(self.shadow[name].shape)}")
            self.shadow[name] = tensor.detach().clone().to(self.shadow[name])
        self.num_updates = int(state["num_updates"])
