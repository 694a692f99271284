"""GuardedStep: zero-weight terms never reach the optimizer (not even Adam's momentum), nothing steps without a
graph, non-finite losses and gradients skip the step with a WARNING naming the terms, clipping is the global norm."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from torch import nn

from facelab.training import GuardedStep, active_terms, weighted_total


def two_nets():
    torch.manual_seed(0)
    a, b = nn.Linear(3, 1), nn.Linear(3, 1)
    return a, b, torch.randn(5, 3)


def snapshot(*modules: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for m in modules for p in m.parameters()]


def same(before: list[torch.Tensor], *modules: nn.Module) -> bool:
    return all(torch.equal(x, p) for x, p in zip(before, (p for m in modules for p in m.parameters())))


def test_weighted_total_leaves_zero_weight_terms_out():
    losses = {"a": torch.tensor(2.0), "b": torch.tensor(float("nan")), "c": torch.tensor(3.0)}
    assert weighted_total(losses, {"a": 0.5, "b": 0.0, "c": 2.0}).item() == 7.0  # 0 * NaN would be NaN
    assert list(active_terms(losses, {"a": 0.5, "b": 0.0, "c": 2.0})) == ["a", "c"]
    assert weighted_total(losses, {"a": 0.0, "b": 0.0, "c": 0.0}) is None

    @dataclass
    class Weights:
        a: float = 1.0
        b: float = 0.0
        c: float = 1.0

    assert weighted_total(losses, Weights()).item() == 5.0
    with pytest.raises(KeyError, match="'c' has no weight"):
        weighted_total(losses, {"a": 1.0, "b": 1.0})


def test_zero_weight_term_does_not_move_adam_momentum():
    """Adam moves a parameter with a zero gradient through its momentum; a left-out term leaves ``.grad`` None."""
    a, b, x = two_nets()
    opt = torch.optim.Adam([*a.parameters(), *b.parameters()], lr=0.1)
    step = GuardedStep()
    terms = lambda: {"a": a(x).pow(2).mean(), "b": b(x).pow(2).mean()}  # noqa: E731
    assert step(opt, terms(), {"a": 1.0, "b": 1.0}).stepped  # both learn: b has momentum now
    b_before = snapshot(b)
    out = step(opt, terms(), {"a": 1.0, "b": 0.0})
    assert out.stepped and same(b_before, b)  # b untouched
    # the naive total 1 * L_a + 0 * L_b does move b (Adam's first moment), which is what the guard prevents
    naive = torch.optim.Adam([*a.parameters(), *b.parameters()], lr=0.1)
    naive.load_state_dict(opt.state_dict())
    naive.zero_grad()
    (terms()["a"] + 0.0 * terms()["b"]).backward()
    naive.step()
    assert not same(b_before, b)


def test_no_graph_takes_no_step_and_leaves_the_optimizer_state_alone():
    a, b, x = two_nets()
    opt = torch.optim.Adam(a.parameters(), lr=0.1)
    before = snapshot(a)
    step = GuardedStep()
    out = step(opt, {"a": a(x).pow(2).mean()}, {"a": 0.0})
    assert out.status == "no_graph" and out.total.item() == 0.0
    out = step(opt, {"a": a(x).pow(2).mean().detach()}, {"a": 1.0})
    assert out.status == "no_graph" and out.total.item() > 0
    assert same(before, a) and not opt.state and step.skipped == 0


def test_non_finite_term_skips_the_step_and_names_it(capsys):
    a, b, x = two_nets()
    opt = torch.optim.Adam([*a.parameters(), *b.parameters()], lr=0.1)
    before = snapshot(a, b)
    step = GuardedStep(name="Recipe")
    bad = b(x).mean() * float("nan")
    out = step(opt, {"a": a(x).pow(2).mean(), "b": bad}, {"a": 1.0, "b": 2.0})
    assert out.status == "non_finite_loss" and out.non_finite == ("b",) and step.skipped == 1
    assert "WARNING facelab.training.steps: Recipe: non-finite b at step 1, optimizer step skipped (1 skipped" in \
        capsys.readouterr().err
    assert same(before, a, b) and not opt.state
    assert all(p.grad is None for p in a.parameters())


def test_non_finite_gradient_skips_the_step(capsys):
    a, _, x = two_nets()
    opt = torch.optim.SGD(a.parameters(), lr=0.1)
    before = snapshot(a)
    y = a(x).pow(2).mean()
    y.register_hook(lambda g: g * float("nan"))  # a finite loss whose backward is not
    out = GuardedStep()(opt, {"y": y}, {"y": 1.0})
    assert out.status == "non_finite_grad" and out.non_finite == ("<gradients>",)
    assert same(before, a) and all(p.grad is None for p in a.parameters())
    assert "non-finite <gradients>" in capsys.readouterr().err


def test_all_ranks_decide_together():
    a, _, x = two_nets()
    opt = torch.optim.SGD(a.parameters(), lr=0.1)
    before = snapshot(a)
    step = GuardedStep(agree=lambda finite: False)  # another rank saw a NaN
    out = step(opt, {"y": a(x).pow(2).mean()}, {"y": 1.0})
    assert out.skipped and out.non_finite == ("<loss on another rank>",) and same(before, a)


def test_clip_is_the_global_gradient_norm():
    a, _, x = two_nets()
    opt = torch.optim.SGD(a.parameters(), lr=1.0)
    before = snapshot(a)
    GuardedStep()(opt, {"y": 100 * a(x).pow(2).mean()}, {"y": 1.0}, clip=0.1)
    moved = torch.cat([(p - q).flatten() for p, q in zip(a.parameters(), before)])
    assert moved.norm().item() == pytest.approx(0.1, rel=1e-5)  # SGD lr 1: the step is the clipped gradient
    calls = []
    GuardedStep(clip=lambda o, m: calls.append(m))(opt, {"y": a(x).sum()}, {"y": 1.0}, clip=0.5)
    assert calls == [0.5]
