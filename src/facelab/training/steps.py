"""One guarded optimizer step of a manual-optimisation recipe: weighted loss terms in, a step only when it is sound.

A recipe computes named loss terms (``losses["landmark_mp"]``, ``losses["perceptual"]``...) and their weights.
:class:`GuardedStep` turns them into one optimizer step, or into none:

* terms of weight 0 never enter the total. ``0 * L`` is still in the graph: its parameters get zero gradients
  (not ``None``), and Adam moves parameters with zero gradients through its momentum; ``0 * NaN`` is NaN.
  Dropping the term leaves their ``.grad`` at ``None``, which every torch optimizer skips entirely.
* no active term with a graph (everything weighted 0, or detached): no backward, no ``optimizer.step()``, so no
  optimizer state (Adam's moments, its step count) changes.
* a non-finite term or gradient: the step is skipped, counted (:attr:`GuardedStep.skipped`) and a WARNING names
  the non-finite terms. Under DDP the loss decision is taken jointly (``agree``), and gradients are all-reduced
  by the backward, so every rank skips together.

Plain PyTorch; :meth:`GuardedStep.for_lightning` plugs in a LightningModule's ``manual_backward``,
``clip_gradients`` and its strategy's ``reduce_boolean_decision`` (duck-typed: nothing here imports Lightning).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor
from torch.optim import Optimizer

from facelab.log import get_logger

__all__ = ["GuardedStep", "StepOutcome", "active_terms", "is_rank_zero", "weighted_total"]

LossWeights = Mapping[str, float] | Any  # a mapping, or a dataclass instance with one float field per term


def _weight(weights: LossWeights, name: str) -> float:
    if isinstance(weights, Mapping):
        if name not in weights:
            raise KeyError(f"loss term {name!r} has no weight (weights: {sorted(weights)})")
        return float(weights[name])
    if not dataclasses.is_dataclass(weights) or not hasattr(weights, name):
        raise KeyError(f"loss term {name!r} has no weight in {type(weights).__name__}")
    return float(getattr(weights, name))


def active_terms(losses: Mapping[str, Tensor], weights: LossWeights) -> dict[str, tuple[float, Tensor]]:
    """The terms whose weight is not 0, as ``{name: (weight, value)}`` (order kept).

    Args:
        losses: scalar loss terms by name.
        weights: a weight per term: a mapping, or a dataclass with one float field per term (e.g. a recipe's
            ``LossWeights``). A term without a weight is a ``KeyError``.
    """
    out = {}
    for name, value in losses.items():
        w = _weight(weights, name)
        if w != 0.0:
            out[name] = (w, value)
    return out


def weighted_total(losses: Mapping[str, Tensor], weights: LossWeights) -> Tensor | None:
    """``sum_k w_k L_k`` over the terms with ``w_k != 0``; None when there is none.

    Zero-weight terms are left out rather than multiplied by 0 (see the module docstring).
    """
    terms = active_terms(losses, weights)
    if not terms:
        return None
    return sum(w * value for w, value in terms.values())


def is_rank_zero() -> bool:
    """True on the process that logs (rank 0 of ``torch.distributed``, or the only process)."""
    dist = torch.distributed
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


@dataclass
class StepOutcome:
    """What :class:`GuardedStep` did.

    Attributes:
        status: ``"stepped"``; ``"no_graph"`` (no active term needs a gradient: nothing ran); ``"non_finite_loss"``
            or ``"non_finite_grad"`` (skipped, counted, warned).
        total: the weighted total of the active terms (a zero scalar when there is none), for logging.
        non_finite: names of the non-finite terms; ``("<gradients>",)`` when only gradients were,
            ``("<loss on another rank>",)`` when another DDP process had the non-finite loss.
    """

    status: Literal["stepped", "no_graph", "non_finite_loss", "non_finite_grad"]
    total: Tensor
    non_finite: tuple[str, ...] = ()

    @property
    def stepped(self) -> bool:
        return self.status == "stepped"

    @property
    def skipped(self) -> bool:
        return self.status in ("non_finite_loss", "non_finite_grad")


class GuardedStep:
    """Backward, optional gradient-norm clip and ``optimizer.step()`` of weighted loss terms, guarded.

    Args:
        backward: runs the backward of a scalar loss (``Tensor.backward`` by default; a LightningModule's
            ``manual_backward`` handles precision plugins and DDP).
        clip: ``clip(optimizer, max_norm)`` clips the gradients of ``optimizer``'s parameters by their global L2
            norm; None: ``torch.nn.utils.clip_grad_norm_``.
        agree: maps this process's "the loss is finite" to the decision of all processes (every rank must skip
            together or the collective backward deadlocks); None: single process.
        name: prefix of the warning (e.g. the recipe's name).
        logger: the logger the warning goes to (the recipe module's ``__name__``).

    Attributes:
        skipped: steps skipped so far because of non-finite values (checkpoint it if it matters).
        calls: steps attempted so far (``__call__`` count).
    """

    def __init__(
        self,
        backward: Callable[[Tensor], None] | None = None,
        clip: Callable[[Optimizer, float], None] | None = None,
        agree: Callable[[bool], bool] | None = None,
        name: str = "training",
        logger: str = __name__,
    ) -> None:
        self.backward = backward if backward is not None else Tensor.backward
        self.clip = clip if clip is not None else _clip_grad_norm
        self.agree = agree if agree is not None else _single_process
        self.name, self.logger = name, logger
        self.skipped = 0
        self.calls = 0

    @classmethod
    def for_lightning(cls, module, name: str | None = None, logger: str | None = None) -> GuardedStep:
        """A guard that steps through a LightningModule (manual optimisation): its ``manual_backward``,
        ``clip_gradients(opt, gradient_clip_val=..., gradient_clip_algorithm="norm")`` and the trainer strategy's
        ``reduce_boolean_decision(all=True)`` (looked up at call time: the trainer is attached after ``__init__``)."""
        hooks = _LightningHooks(module)
        return cls(backward=hooks.backward, clip=hooks.clip, agree=hooks.agree, name=name or type(module).__name__,
                   logger=logger or type(module).__module__)

    def __call__(self, optimizer: Optimizer, losses: Mapping[str, Tensor], weights: LossWeights,
                 clip: float = 0.0) -> StepOutcome:
        """One step on ``sum_k w_k L_k``; ``optimizer``'s gradients are zeroed before and after.

        Args:
            optimizer: the optimizer to step.
            losses: scalar loss terms by name.
            weights: their weights (see :func:`active_terms`).
            clip: gradient-norm clip (``> 0``) before the step; 0: none.
        """
        self.calls += 1
        optimizer.zero_grad(set_to_none=True)
        terms = active_terms(losses, weights)
        total = sum(w * value for w, value in terms.values()) if terms else _zero_like(losses)
        if not any(value.requires_grad for _, value in terms.values()):
            return StepOutcome("no_graph", total)
        finite_terms = torch.stack([torch.isfinite(value).all() for _, value in terms.values()])
        finite = self.agree(bool(finite_terms.all()))  # one host sync for all terms
        status: Literal["non_finite_loss", "non_finite_grad"] = "non_finite_loss"
        if finite:
            self.backward(total)
            if clip > 0:
                self.clip(optimizer, clip)
            finite = _gradients_finite(optimizer)  # all-reduced under DDP: the same on every rank
            status = "non_finite_grad"
        if not finite:
            optimizer.zero_grad(set_to_none=True)
            self.skipped += 1
            bad = tuple(n for n, ok in zip(terms, finite_terms.tolist()) if not ok)
            bad = bad or (("<gradients>",) if status == "non_finite_grad" else ("<loss on another rank>",))
            if is_rank_zero():
                get_logger(self.logger).warning("%s: non-finite %s at step %d, optimizer step skipped (%d skipped "
                                                "so far)", self.name, ", ".join(bad), self.calls, self.skipped)
            return StepOutcome(status, total.detach(), bad)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)  # no stale gradients on a network that is frozen next
        return StepOutcome("stepped", total.detach())


class _LightningHooks:
    """A LightningModule's backward, clipping and collective decision (bound methods: picklable for spawn)."""

    def __init__(self, module) -> None:
        self.module = module

    def backward(self, loss: Tensor) -> None:
        self.module.manual_backward(loss)

    def clip(self, optimizer: Optimizer, max_norm: float) -> None:
        self.module.clip_gradients(optimizer, gradient_clip_val=max_norm, gradient_clip_algorithm="norm")

    def agree(self, finite: bool) -> bool:
        return bool(self.module.trainer.strategy.reduce_boolean_decision(finite, all=True))


def _zero_like(losses: Mapping[str, Tensor]) -> Tensor:
    ref = next(iter(losses.values()), None)
    return torch.zeros((), device=None if ref is None else ref.device, dtype=None if ref is None else ref.dtype)


def _single_process(finite: bool) -> bool:
    return finite


def _params(optimizer: Optimizer) -> list[Tensor]:
    return [p for group in optimizer.param_groups for p in group["params"]]


def _gradients_finite(optimizer: Optimizer) -> bool:
    grads = [p.grad for p in _params(optimizer) if p.grad is not None]
    return bool(torch.stack([g.isfinite().all() for g in grads]).all()) if grads else True


def _clip_grad_norm(optimizer: Optimizer, max_norm: float) -> None:
    torch.nn.utils.clip_grad_norm_(_params(optimizer), max_norm)
