"""Frozen sub-networks and BatchNorm statistics.

A frozen network of a recipe (SMIRK's pose and shape encoders in the core phase, a teacher, a pretrained trunk)
must neither learn nor drift: no gradients, and BatchNorm normalising with its running statistics without
updating them, i.e. eval mode, even when the trainer calls ``model.train()`` (Lightning does at every epoch and
after every validation). :func:`freeze` marks such modules and :func:`restore_frozen_modes` (call it from the
owner's ``train()``) puts them back into eval mode::

    class Recipe(LightningModule):
        def __init__(self):
            ...
            freeze(self.teacher)

        def train(self, mode: bool = True):
            super().train(mode)
            return restore_frozen_modes(self)

:func:`freeze_norm_statistics` freezes only the BatchNorm statistics of a network that otherwise trains
(fine-tuning with small batches). :func:`norm_statistics` / :func:`restore_norm_statistics` snapshot and restore
running statistics, e.g. when a step is skipped because a batch was non-finite (its forward pass already wrote
NaN into them). :func:`kept_norm_statistics` runs a block in train mode (batch statistics, gradients) without
letting it move the running statistics: a forward pass on images of another distribution than the data (a
generator's output in a cycle path) must not change what the network normalises with at test time.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _NormBase

__all__ = ["freeze", "freeze_norm_statistics", "is_frozen", "kept_norm_statistics", "norm_statistics",
           "restore_frozen_modes", "restore_norm_statistics", "unfreeze"]

#: Attribute marking a module that :func:`restore_frozen_modes` keeps in eval mode.
_EVAL_MARK = "_facelab_keep_eval"
_STAT_NAMES = ("running_mean", "running_var", "num_batches_tracked")


def freeze(*modules: nn.Module) -> None:
    """No gradients (``requires_grad=False``) and eval mode, kept by :func:`restore_frozen_modes`.

    Args:
        modules: the networks to freeze (their sub-modules included).
    """
    for module in modules:
        module.requires_grad_(False)
        module.eval()
        setattr(module, _EVAL_MARK, True)


def unfreeze(*modules: nn.Module) -> None:
    """Undo :func:`freeze` (and :func:`freeze_norm_statistics` inside): trainable, train mode."""
    for module in modules:
        module.requires_grad_(True)
        for sub in module.modules():
            if getattr(sub, _EVAL_MARK, False):
                delattr(sub, _EVAL_MARK)
        module.train()


def freeze_norm_statistics(module: nn.Module) -> list[nn.Module]:
    """Keep every BatchNorm layer of ``module`` in eval mode: it normalises with, and no longer updates, its
    running statistics; its affine parameters still train. Returns the layers (kept by
    :func:`restore_frozen_modes`)."""
    layers = [m for m in module.modules() if isinstance(m, _NormBase) and m.track_running_stats]
    for layer in layers:
        layer.eval()
        setattr(layer, _EVAL_MARK, True)
    return layers


def is_frozen(module: nn.Module) -> bool:
    """Whether :func:`freeze` or :func:`freeze_norm_statistics` marked ``module`` to stay in eval mode."""
    return bool(getattr(module, _EVAL_MARK, False))


def restore_frozen_modes(root: nn.Module) -> nn.Module:
    """Put every marked module below ``root`` (included) back into eval mode; returns ``root``.

    Call it at the end of the owner's ``train(mode)`` override (``nn.Module.train`` recurses into children, so
    the marked ones have just been switched to train mode).
    """
    for module in root.modules():
        if getattr(module, _EVAL_MARK, False):
            module.eval()
    return root


def norm_statistics(module: nn.Module, clone: bool = False) -> dict[str, Tensor]:
    """Running statistics (``running_mean``, ``running_var``, ``num_batches_tracked``) of every normalisation layer
    that tracks them, by buffer name; ``clone=True`` copies them (a snapshot), else the live buffers."""
    stats = {}
    for prefix, layer in module.named_modules():
        if isinstance(layer, _NormBase) and layer.track_running_stats:
            for name in _STAT_NAMES:
                buf = getattr(layer, name, None)
                if buf is not None:
                    stats[f"{prefix}.{name}" if prefix else name] = buf
    return {name: buf.clone() for name, buf in stats.items()} if clone else stats


@torch.no_grad()
def restore_norm_statistics(module: nn.Module, saved: dict[str, Tensor], only_if_non_finite: bool = True) -> bool:
    """Copy a :func:`norm_statistics` snapshot back into ``module``; returns whether it did.

    Args:
        module: the network the snapshot was taken of.
        saved: ``norm_statistics(module, clone=True)`` from before the forward passes to undo.
        only_if_non_finite: restore only when some floating statistic is now non-finite (after a skipped step:
            a finite batch's statistics are kept, a NaN batch changes nothing).
    """
    current = norm_statistics(module)
    if current.keys() != saved.keys():
        raise ValueError(f"the snapshot has {len(saved)} statistics, the module {len(current)}: not a snapshot of "
                         "this module")
    if only_if_non_finite and all(torch.isfinite(b).all() for b in current.values() if b.is_floating_point()):
        return False
    for name, buf in current.items():
        buf.copy_(saved[name])
    return True


@contextmanager
def kept_norm_statistics(module: nn.Module, enabled: bool = True) -> Iterator[None]:
    """Inside the block, ``module``'s normalisation layers work as usual (train mode normalises with the batch's
    statistics and back-propagates through them) but leave their running statistics as they were, so the block's
    inputs never reach what the module normalises with in eval mode. ``enabled=False``: a no-op.

    The layers' momentum is 0 inside the block (the running averages are updated with weight 0, which keeps the
    tensors that autograd saved intact) and ``num_batches_tracked`` is put back afterwards.
    """
    if not enabled:
        yield
        return
    layers = [m for m in module.modules() if isinstance(m, _NormBase) and m.track_running_stats]
    saved = [(m.momentum, None if m.num_batches_tracked is None else m.num_batches_tracked.clone()) for m in layers]
    for layer in layers:
        layer.momentum = 0.0
    try:
        yield
    finally:
        for layer, (momentum, tracked) in zip(layers, saved):
            layer.momentum = momentum
            if tracked is not None:
                layer.num_batches_tracked.copy_(tracked)
