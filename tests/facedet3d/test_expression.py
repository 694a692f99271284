"""The AU -> BFM expression map that gives Eq. 3's target geometry alpha^_e (facedet3d.expression): it recovers a
linear relation, predicts the target expression (or, keeping the residual, returns the input's when the AUs do not
change), sums DDP statistics, round-trips through a checkpoint dict, and refuses to be used unfitted or with the
wrong expression size."""

from __future__ import annotations

import pytest
import torch

from facedet3d.expression import AUExpressionMap, ExpressionMapError


def _data(n=400, k=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    aus = torch.rand(n, 17, generator=g)
    w = torch.randn(17, k, generator=g)
    bias = torch.randn(k, generator=g)
    return aus, aus @ w + bias + 0.01 * torch.randn(n, k, generator=g), w, bias


def test_recovers_a_linear_relation_and_keeps_the_input_expression_at_equal_aus():
    aus, exp, w, bias = _data()
    m = AUExpressionMap(ridge=1e-6)
    for chunk in range(4):  # accumulated batch by batch
        m.update(aus[chunk * 100:(chunk + 1) * 100], exp[chunk * 100:(chunk + 1) * 100])
    assert m.count == 400
    fit = m.weights()
    torch.testing.assert_close(fit[:-1].float(), w, atol=0.02, rtol=0)
    torch.testing.assert_close(fit[-1].float(), bias, atol=0.02, rtol=0)
    own = torch.randn(3, 12)
    x, y = aus[:3], aus[3:6]
    torch.testing.assert_close(m.target_expression(own, x, x, keep_residual=True), own)  # y = x: the input exactly
    torch.testing.assert_close(m.target_expression(own, x, y, keep_residual=True), own + (y - x) @ w, atol=0.03,
                               rtol=0)
    # the default is the regression's prediction: it ignores the input's expression
    torch.testing.assert_close(m.target_expression(own, x, y), y @ w + bias, atol=0.03, rtol=0)
    torch.testing.assert_close(m.mean_expression().float(), exp.mean(0), atol=1e-5, rtol=0)
    # against the truth both beat copying the input and predicting the mean
    truth = exp[3:6]
    for pred in (m.target_expression(exp[:3], x, y), m.target_expression(exp[:3], x, y, keep_residual=True)):
        assert (pred - truth).square().mean() < 0.01 * (exp[:3] - truth).square().mean()
        assert (pred - truth).square().mean() < 0.01 * (m.mean_expression().float() - truth).square().mean()

def test_ddp_reduce_sums_every_statistic_once():
    aus, exp, _, _ = _data(n=64)
    single, reduced = AUExpressionMap(), AUExpressionMap()
    single.update(torch.cat([aus, aus]), torch.cat([exp, exp]))
    calls = []

    def two_ranks(t):  # what an all-reduce over two ranks holding the same batch returns
        calls.append(t.shape)
        return 2 * t

    reduced.update(aus, exp, reduce=two_ranks)
    assert len(calls) == 1 and reduced.count == single.count == 128
    torch.testing.assert_close(reduced.weights(), single.weights())


def test_state_round_trip_and_errors():
    m = AUExpressionMap()
    with pytest.raises(ExpressionMapError, match="no training face"):
        m.weights()
    assert not AUExpressionMap.from_state_dict(None).fitted  # a checkpoint from before the map
    aus, exp, _, _ = _data(n=50, k=5)
    m.update(aus, exp)
    back = AUExpressionMap.from_state_dict(m.state_dict())
    assert back.count == 50
    torch.testing.assert_close(back.weights(), m.weights())
    with pytest.raises(ExpressionMapError, match="fitted on 5"):
        m.target_expression(torch.zeros(1, 7), aus[:1], aus[1:2])
    with pytest.raises(ExpressionMapError, match="changed"):
        m.update(aus, torch.zeros(50, 6))
    with pytest.raises(ExpressionMapError, match="expects AUs"):
        m.update(aus[:, :5], exp)
