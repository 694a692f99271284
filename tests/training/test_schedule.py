"""The per-epoch restarted cosine (SMIRK supplementary §1.6) as LambdaLR: its values, its period set per epoch,
its state in checkpoints, and the per-batch stepping of an alternating recipe."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from facelab.training import EpochCosine, epoch_cosine, set_steps_per_epoch, step_schedulers


def test_epoch_cosine_restarts_every_epoch():
    schedule = EpochCosine(steps_per_epoch=10, min_factor=0.0)
    assert schedule(0) == 1.0 and schedule(10) == 1.0 and schedule(25) == pytest.approx(0.5)
    assert schedule(9) < 0.03
    floor = EpochCosine(steps_per_epoch=4, min_factor=0.2)
    assert [floor(k) for k in range(5)] == pytest.approx([0.2 + 0.8 * 0.5 * (1 + math.cos(math.pi * k / 4))
                                                          for k in (0, 1, 2, 3, 0)])


def test_schedulers_anneal_per_epoch_and_checkpoint_the_period():
    params = [torch.nn.Parameter(torch.zeros(1))]
    opt_a, opt_b = torch.optim.SGD(params, lr=1.0), torch.optim.SGD(params, lr=0.5)
    schedulers = [epoch_cosine(opt_a, min_factor=0.1), epoch_cosine(opt_b)]
    lrs = []
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # stepping before the optimizer (an alternating recipe) does not warn
        for _epoch in range(2):
            assert set_steps_per_epoch(schedulers, 3) == 3
            for _ in range(3):
                lrs.append(opt_a.param_groups[0]["lr"])
                step_schedulers(schedulers)
    first = [0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * k / 3)) for k in range(3)]
    assert lrs == pytest.approx(first + first)
    state = schedulers[0].state_dict()
    assert state["lr_lambdas"][0]["steps_per_epoch"] == 3
    restored = epoch_cosine(torch.optim.SGD(params, lr=1.0), min_factor=0.1)
    restored.load_state_dict(state)
    assert restored.lr_lambdas[0].steps_per_epoch == 3 and restored.last_epoch == 6


def test_unknown_epoch_length_keeps_the_lr_and_warns(capsys):
    scheduler = epoch_cosine(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0))
    assert set_steps_per_epoch([scheduler], float("inf")) == 2**62
    assert "WARNING facelab.training.schedule: the training loader has no length" in capsys.readouterr().err
