"""EMA: the average against the hand-computed recursion, TF and StyleGAN2-ADA warm-ups against their formulas,
swap-in for evaluation, buffers, checkpoints."""

from __future__ import annotations

import io
import math

import pytest
import torch
from torch import nn

from facelab.training import EMA, half_life_decay


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))


def perturb(module: nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g))


def test_update_is_the_exponential_recursion():
    module = net()
    ema = EMA(module, decay=0.9, warmup="none")
    s = [p.detach().clone() for p in module.parameters()]
    for step in range(3):
        perturb(module, step)
        assert ema.update(module) == 0.9
        s = [0.9 * si + 0.1 * p.detach() for si, p in zip(s, module.parameters())]
    for (name, _), expected in zip(module.named_parameters(), s):
        torch.testing.assert_close(ema.shadow[name], expected)
    assert ema.num_updates == 3


def test_warmups():
    tf = EMA(net(), decay=0.999, warmup="tf")
    assert tf.decay_at(0) == pytest.approx(0.1) and tf.decay_at(90) == pytest.approx(91 / 100)
    assert tf.decay_at(10**6) == 0.999
    # StyleGAN2-ADA training_loop: ema_nimg = min(ema_kimg * 1000, cur_nimg * ema_rampup);
    # ema_beta = 0.5 ** (batch_size / max(ema_nimg, 1e-8))
    batch, ema_kimg, rampup = 32, 10, 0.05
    ramp = EMA(net(), decay=half_life_decay(ema_kimg * 1000, batch), warmup="rampup", rampup=rampup)
    for step in (0, 1, 100, 5000, 7000, 10**5):
        ema_nimg = min(ema_kimg * 1000, step * batch * rampup)
        expected = 0.5 ** (batch / max(ema_nimg, 1e-8))
        assert ramp.decay_at(step) == pytest.approx(expected, rel=1e-9, abs=1e-12), step
    assert half_life_decay(10_000, 32) == pytest.approx(math.exp(math.log(0.5) * 32 / 10_000))
    with pytest.raises(ValueError, match="decay"):
        EMA(net(), decay=1.0)


def test_swapped_evaluates_with_the_average_and_restores_the_weights():
    module = net()
    ema = EMA(module, decay=0.5, warmup="none")
    perturb(module, 1)
    ema.update(module)
    trained = {k: v.clone() for k, v in module.state_dict().items()}
    with pytest.raises(RuntimeError, match="inside"), ema.swapped(module) as inside:
        assert all(torch.equal(inside.state_dict()[k], v) for k, v in ema.shadow.items())
        raise RuntimeError("inside")  # restored even when evaluation fails
    assert all(torch.equal(module.state_dict()[k], v) for k, v in trained.items())


def test_buffers_are_averaged_and_counters_copied():
    module = net().train()
    ema = EMA(module, decay=0.5, warmup="none")
    mean0 = module[1].running_mean.clone()
    module(torch.randn(8, 3) + 3.0)  # BatchNorm updates its statistics
    ema.update(module)
    torch.testing.assert_close(ema.shadow["1.running_mean"], 0.5 * mean0 + 0.5 * module[1].running_mean)
    assert ema.shadow["1.num_batches_tracked"].item() == 1
    assert "1.running_mean" not in EMA(module, buffers=False).shadow


def test_state_dict_round_trip_and_dtype_follow():
    module = net()
    ema = EMA(module, decay=0.9)
    perturb(module, 2)
    ema.update(module)
    buffer = io.BytesIO()
    torch.save(ema.state_dict(), buffer)
    buffer.seek(0)
    other = EMA(net(), decay=0.9)
    other.load_state_dict(torch.load(buffer, weights_only=True))
    assert other.num_updates == 1 and all(torch.equal(other.shadow[k], v) for k, v in ema.shadow.items())
    with pytest.raises(ValueError, match="another module"):
        EMA(nn.Linear(3, 4)).load_state_dict(ema.state_dict())
    module.double()  # the network moved: the shadow follows at the next update
    ema.update(module)
    assert all(v.dtype == torch.float64 for k, v in ema.shadow.items() if "num_batches" not in k)
