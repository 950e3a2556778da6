"""FlatAdam's guard around torch's private fused Adam kernel."""

import logging

import torch

from ppo_cli.agent import ActorCritic
from ppo_cli.optim import FlatAdam, clip_and_step


def _trained(n: int = 5) -> list[torch.Tensor]:
    agent = ActorCritic(3, 2, (8,), seed=0)
    return _steps(FlatAdam(agent, lr=1e-3), agent, n)


def _steps(optimizer: FlatAdam, agent: ActorCritic, n: int = 5) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    for _ in range(n):
        optimizer.zero_grad()
        obs = torch.randn(16, 3, generator=g)
        loss = agent.value(obs).pow(2).mean() + agent.forward(obs)[0].pow(2).mean()
        loss.backward()
        clip_and_step(optimizer, 0.5)
    return [p.detach().clone() for p in agent.parameters()]


def test_a_failing_private_kernel_falls_back_to_adam_step(monkeypatch, caplog):
    want = _trained()
    agent = ActorCritic(3, 2, (8,), seed=0)
    optimizer = FlatAdam(agent, lr=1e-3)
    calls = []

    def changed_signature(*args, **kwargs):
        calls.append(1)
        raise TypeError("_fused_adam_() got an unexpected keyword argument 'found_inf'")

    monkeypatch.setattr(optimizer, "_kernel", changed_signature)  # as a torch whose private kernel changed
    with caplog.at_level(logging.WARNING):
        got = _steps(optimizer, agent)
    assert calls == [1] and optimizer.lean is False  # tried once, then the public step for good
    assert "torch._fused_adam_ failed (TypeError" in caplog.text
    for a, b in zip(got, want):
        assert torch.equal(a, b)  # Adam.step(fused=True) is the same arithmetic: bit for bit
    assert int(optimizer.state[optimizer.flat]["step"]) == 5  # the failed call did not count a step


def test_without_the_private_kernel_flat_adam_uses_the_public_step(monkeypatch):
    want = _trained()
    monkeypatch.delattr(torch, "_fused_adam_")
    agent = ActorCritic(3, 2, (8,), seed=0)
    optimizer = FlatAdam(agent, lr=1e-3)
    assert optimizer.lean is False
    for a, b in zip(_steps(optimizer, agent), want):  # the plain Adam: the same maths, another summation order
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
