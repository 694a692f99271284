"""The shared pieces: masked means, the random-weights decision (loud on the console), the frozen-network base."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from facelab.losses import FrozenNetwork, as_rgb, masked_mean, require_weights_or_random


def test_masked_mean():
    values = torch.tensor([[1.0, 2.0], [3.0, 4.0]], requires_grad=True)
    assert masked_mean(values).item() == 2.5
    assert masked_mean(values, torch.tensor([[True, False], [False, True]])).item() == 2.5
    assert masked_mean(values, torch.tensor([1.0, 0.0])).item() == 2.0  # broadcast: column 0 of both rows
    assert masked_mean(values, torch.tensor([[0.25, 0.0], [0.0, 0.0]])).item() == 1.0  # soft weights, sum < 1
    empty = masked_mean(values, torch.zeros(2, 2))
    empty.backward()
    assert empty.item() == 0.0 and torch.isfinite(values.grad).all()


def test_as_rgb():
    assert as_rgb(torch.zeros(2, 1, 4, 4)).shape == (2, 3, 4, 4)
    with pytest.raises(ValueError, match=r"\(B, 1 or 3, H, W\)"):
        as_rgb(torch.zeros(2, 2, 4, 4))


def test_random_weights_decision(capsys):
    capsys.readouterr()
    require_weights_or_random("weights.pth", False, "Net", "model.net_weights")  # a path: nothing to decide
    assert capsys.readouterr().err == ""
    with pytest.raises(ValueError, match=r"Net: model.net_weights is None.*allow_random=True"):
        require_weights_or_random(None, False, "Net", "model.net_weights")
    require_weights_or_random(None, True, "Net", "model.net_weights")
    err = capsys.readouterr().err
    assert "WARNING" in err and "`model.net_weights`" in err and "RANDOM" in err


class Frozen(FrozenNetwork):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5), nn.BatchNorm1d(2))
        self.freeze()


def test_frozen_network_stays_in_eval():
    module = nn.Sequential(Frozen(), nn.Linear(2, 2)).train()
    frozen = module[0]
    assert not frozen.training and not frozen.net[1].training and module[1].training
    assert not any(p.requires_grad for p in frozen.parameters())
    x = torch.randn(4, 2, requires_grad=True)
    frozen.net(x).sum().backward()
    assert x.grad is not None  # gradients reach the input
