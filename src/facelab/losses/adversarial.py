"""Adversarial losses (generator and discriminator sides) and the R1 gradient penalty with lazy regularisation.

Logits may have any shape: one per image (B,) / (B, 1), a PatchGAN map (B, 1, h, w) or a U-Net discriminator's
per-pixel map (B, 1, H, W); every loss is the mean over all logits. A sequence of logit tensors (e.g. the U-Net
discriminator's global logit *and* its per-pixel map, Schönfeld et al. 2020 §3) gives the sum of the per-tensor
losses.

* ``"non_saturating"`` (Goodfellow et al. 2014 §3; StyleGAN2's loss): D ``softplus(-D(x)) + softplus(D(G(z)))``,
  G ``softplus(-D(G(z)))`` (= ``-log sigmoid``).
* ``"hinge"`` (Lim & Ye 2017; Miyato et al. 2018): D ``relu(1 - D(x)) + relu(1 + D(G(z)))``, G ``-D(G(z))``.
* ``"lsgan"`` (Mao et al. 2017, Eq. 2 with a = 0, b = c = 1): D ``1/2 (D(x) - 1)^2 + 1/2 D(G(z))^2``,
  G ``1/2 (D(G(z)) - 1)^2``.

:func:`feature_matching_loss` is pix2pixHD's discriminator feature matching (Wang et al. 2018, Eq. 4).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "AdversarialLoss",
    "GanLossKind",
    "LazyR1",
    "discriminator_loss",
    "feature_matching_loss",
    "generator_loss",
    "r1_penalty",
]

GanLossKind = Literal["non_saturating", "hinge", "lsgan"]
Logits = Tensor | Sequence[Tensor]


def _as_list(logits: Logits) -> list[Tensor]:
    items = [logits] if isinstance(logits, Tensor) else list(logits)
    if not items:
        raise ValueError("no logits given")
    return items


def _check_kind(kind: str) -> None:
    if kind not in ("non_saturating", "hinge", "lsgan"):
        raise ValueError(f"kind must be 'non_saturating', 'hinge' or 'lsgan', got {kind!r}")


def generator_loss(fake_logits: Logits, kind: GanLossKind = "non_saturating") -> Tensor:
    """The generator's adversarial loss on the discriminator's logits for generated samples.

    Args:
        fake_logits: ``D(G(z))``, any shape, or a sequence of such tensors (losses summed).
        kind: ``"non_saturating"``, ``"hinge"`` or ``"lsgan"`` (module docstring).

    Returns:
        Scalar.
    """
    _check_kind(kind)
    total = 0.0
    for f in _as_list(fake_logits):
        if kind == "non_saturating":
            total = total + F.softplus(-f).mean()
        elif kind == "hinge":
            total = total - f.mean()
        else:
            total = total + 0.5 * (f - 1.0).square().mean()
    return total


def feature_matching_loss(real: Sequence[Sequence[Tensor]], fake: Sequence[Sequence[Tensor]]) -> Tensor:
    """pix2pixHD's feature-matching loss (Eq. 4): ``sum_k sum_i 1/N_i |D_k^(i)(x) - D_k^(i)(G(s))|_1`` over the
    scales ``k`` and the intermediate layers ``i`` (the logits excluded), as its implementation weights it
    (``4 / (n_layers + 1)`` per layer, ``1 / num_d`` per scale, the L1 a mean over elements).

    Args:
        real: per scale, the discriminator's features of real samples (logits last; detached here).
        fake: the same of generated samples (gradients flow to the generator).

    Returns:
        Scalar.
    """
    if len(real) != len(fake) or not real:
        raise ValueError(f"{len(real)} real and {len(fake)} fake scales")
    total = 0.0
    for r, f in zip(real, fake):
        if len(r) != len(f) or len(r) < 2:
            raise ValueError(f"a scale has {len(r)} real and {len(f)} fake feature maps (intermediate + logits)")
        layer_weight = 4.0 / (len(r) - 1)  # pix2pixHD: 4 / (n_layers + 1), its count of intermediate maps
        for a, b in zip(r[:-1], f[:-1]):
            total = total + layer_weight / len(real) * F.l1_loss(b, a.detach())
    return total


def discriminator_loss(real_logits: Logits, fake_logits: Logits, kind: GanLossKind = "non_saturating") -> Tensor:
    """The discriminator's loss: real samples pushed to "real", generated (detached by the caller) to "fake".

    Args:
        real_logits: ``D(x)``, any shape, or a sequence (matched with ``fake_logits`` by position).
        fake_logits: ``D(G(z))``, same structure.
        kind: ``"non_saturating"``, ``"hinge"`` or ``"lsgan"``.

    Returns:
        Scalar.
    """
    _check_kind(kind)
    reals, fakes = _as_list(real_logits), _as_list(fake_logits)
    if len(reals) != len(fakes):
        raise ValueError(f"{len(reals)} real and {len(fakes)} fake logit tensors")
    total = 0.0
    for r, f in zip(reals, fakes):
        if kind == "non_saturating":
            total = total + F.softplus(-r).mean() + F.softplus(f).mean()
        elif kind == "hinge":
            total = total + F.relu(1.0 - r).mean() + F.relu(1.0 + f).mean()
        else:
            total = total + 0.5 * (r - 1.0).square().mean() + 0.5 * f.square().mean()
    return total


class AdversarialLoss(nn.Module):
    """Both sides of one GAN loss kind (for injection through the config).

    Args:
        kind: ``"non_saturating"``, ``"hinge"`` or ``"lsgan"``.
    """

    def __init__(self, kind: GanLossKind = "non_saturating") -> None:
        super().__init__()
        _check_kind(kind)
        self.kind = kind

    def generator(self, fake_logits: Logits) -> Tensor:
        """:func:`generator_loss`."""
        return generator_loss(fake_logits, self.kind)

    def discriminator(self, real_logits: Logits, fake_logits: Logits) -> Tensor:
        """:func:`discriminator_loss`."""
        return discriminator_loss(real_logits, fake_logits, self.kind)

    def forward(self, fake_logits: Logits) -> Tensor:
        """The generator side (the term a generator step adds)."""
        return self.generator(fake_logits)


def r1_penalty(real_logits: Logits, real: Tensor) -> Tensor:
    """``E_x ||grad_x D(x)||^2`` on real samples (Mescheder et al. 2018, Eq. 9, without the ``gamma / 2``).

    The gradient is taken with ``create_graph=True`` so the penalty trains the discriminator.

    Args:
        real_logits: ``D(real)`` computed from ``real`` (any shape; summed, so a per-pixel map gives the gradient
            of its sum), or a sequence of such tensors (summed: the gradient of the total logit).
        real: (B, ...) the input with ``requires_grad=True``.

    Returns:
        Scalar: the squared gradient norm per sample, averaged over the batch.
    """
    if not real.requires_grad:
        raise ValueError("r1_penalty needs the real input with requires_grad=True before D is applied to it")
    total = sum(logit.sum() for logit in _as_list(real_logits))
    (grad,) = torch.autograd.grad(total, real, create_graph=True)
    return grad.square().flatten(1).sum(1).mean()


class LazyR1(nn.Module):
    """R1 with lazy regularisation (Karras et al. 2020, StyleGAN2 §3.1): ``gamma/2 * E||grad D(x)||^2`` computed on
    every ``interval``-th discriminator step only, multiplied by ``interval`` so its average strength is unchanged.

    Call it once per discriminator step; on due steps it runs ``discriminator`` on a fresh copy of ``real`` with
    gradients and returns the scaled penalty, otherwise a zero (nothing is computed). The step counter is a buffer,
    so checkpoints keep the cadence. StyleGAN2 also scales the D optimiser's learning rate and betas by
    ``c = interval / (interval + 1)`` (``lr * c``, ``beta ** c``): see :meth:`optimizer_ratio`.

    Args:
        gamma: R1 weight (StyleGAN2: 10 for the generic config, 2 at 1024^2; FaceDet3D follows GANimation/StyleGAN).
        interval: apply every N discriminator steps (16 in StyleGAN2; 1 = every step, not lazy).
    """

    steps: Tensor

    def __init__(self, gamma: float = 10.0, interval: int = 16) -> None:
        super().__init__()
        if interval < 1:
            raise ValueError(f"interval must be >= 1, got {interval}")
        self.gamma, self.interval = gamma, interval
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    @property
    def due(self) -> bool:
        """Whether the next call computes the penalty."""
        return self.gamma != 0 and int(self.steps) % self.interval == 0

    def optimizer_ratio(self) -> float:
        """``interval / (interval + 1)`` (StyleGAN2's ``mb_ratio``; 1 when not lazy)."""
        return self.interval / (self.interval + 1) if self.interval > 1 else 1.0

    def forward(self, discriminator: Callable[[Tensor], Logits], real: Tensor) -> Tensor:
        """Args: discriminator: ``real -> logits`` (a Tensor or a sequence). real: (B, ...) real samples.

        Returns:
            Scalar: ``interval * gamma / 2 * r1_penalty`` on due steps, else 0.
        """
        due = self.due
        self.steps += 1
        if not due:
            return real.new_zeros(())
        real = real.detach().requires_grad_(True)
        return self.interval * 0.5 * self.gamma * r1_penalty(discriminator(real), real)
