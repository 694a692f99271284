"""Frozen networks stay frozen through ``train()`` (no gradients, BatchNorm statistics untouched); frozen
BatchNorm statistics under a trainable network; snapshots of statistics restored after a NaN batch; a block that
trains through BatchNorm without moving its running statistics."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from facelab.training import (
    freeze,
    freeze_norm_statistics,
    is_frozen,
    kept_norm_statistics,
    norm_statistics,
    restore_frozen_modes,
    restore_norm_statistics,
    unfreeze,
)


class Owner(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.teacher = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Dropout(0.5))
        self.student = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))

    def train(self, mode: bool = True) -> Owner:
        super().train(mode)
        return restore_frozen_modes(self)


def test_frozen_network_stays_in_eval_through_train():
    owner = Owner()
    freeze(owner.teacher)
    owner.train()
    assert is_frozen(owner.teacher) and not owner.teacher.training and not owner.teacher[1].training
    assert owner.student.training
    assert not any(p.requires_grad for p in owner.teacher.parameters())
    stats = norm_statistics(owner.teacher, clone=True)
    x = torch.randn(8, 3) * 5
    out = owner.teacher(x)
    torch.testing.assert_close(owner.teacher(x), out)  # eval: deterministic (no dropout, running statistics)
    assert all(torch.equal(v, norm_statistics(owner.teacher)[k]) for k, v in stats.items())
    # what train mode would have done: the same forward updates the statistics
    unfreeze(owner.teacher)
    owner.train()
    assert owner.teacher.training and all(p.requires_grad for p in owner.teacher.parameters())
    owner.teacher(x)
    assert not torch.equal(owner.teacher[1].running_mean, stats["1.running_mean"])


def test_frozen_norm_statistics_keep_affine_parameters_trainable():
    owner = Owner()
    layers = freeze_norm_statistics(owner.student)
    owner.train()
    assert layers == [owner.student[1]] and not owner.student[1].training and owner.student[0].training
    before = norm_statistics(owner.student, clone=True)
    owner.student(torch.randn(8, 3) + 2).sum().backward()
    assert owner.student[1].weight.grad is not None
    assert all(torch.equal(v, norm_statistics(owner.student)[k]) for k, v in before.items())


def test_restore_norm_statistics_only_after_non_finite_ones():
    owner = Owner().train()
    saved = norm_statistics(owner, clone=True)
    assert set(saved) == {f"{m}.1.{s}" for m in ("teacher", "student")
                          for s in ("running_mean", "running_var", "num_batches_tracked")}
    owner.student(torch.randn(8, 3))  # a finite batch: its statistics are kept
    assert not restore_norm_statistics(owner, saved)
    assert not torch.equal(owner.student[1].running_mean, saved["student.1.running_mean"])
    owner.student(torch.full((8, 3), float("nan")))  # a NaN batch: put back
    assert restore_norm_statistics(owner, saved)
    assert all(torch.equal(v, norm_statistics(owner)[k]) for k, v in saved.items())
    with pytest.raises(ValueError, match="not a snapshot"):
        restore_norm_statistics(owner.student, saved, only_if_non_finite=False)


@pytest.mark.parametrize("momentum", [0.1, None])
def test_kept_norm_statistics_train_through_batch_norm_but_keep_the_running_ones(momentum):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, momentum=momentum), nn.ReLU()).train()
    net(torch.randn(4, 3, 8, 8))  # some real statistics first
    before = norm_statistics(net, clone=True)
    x = torch.randn(4, 3, 8, 8) * 5 + 3  # another distribution (a generator's images)
    reference = net(x)  # what train mode computes: batch statistics ...
    restore_norm_statistics(net, before, only_if_non_finite=False)
    with kept_norm_statistics(net):
        out = net(x)
        out.square().mean().backward()  # autograd's saved tensors are intact
    assert torch.allclose(out, reference)  # ... the same normalisation inside the block
    assert net[0].weight.grad is not None and net[0].weight.grad.abs().sum() > 0
    assert all(torch.equal(v, norm_statistics(net)[k]) for k, v in before.items())  # ... running ones untouched
    assert net[1].momentum == momentum
    net(x)  # outside the block the statistics move again
    assert not torch.equal(net[1].running_mean, before["1.running_mean"])
    with kept_norm_statistics(net, enabled=False):
        net(x * 2)
    assert net[1].num_batches_tracked.item() == before["1.num_batches_tracked"].item() + 2
