"""The fused numpy minibatch (ppo_cli.fused) against the same loss composed from torch operations."""

import pytest
import torch

from ppo_cli import losses
from ppo_cli.agent import ActorCritic
from ppo_cli.config import Config
from ppo_cli.fused import FusedLoss, LossCoefs
from ppo_cli.optim import FlatAdam


def _flatten(agent: ActorCritic) -> torch.Tensor:
    """Make every parameter a view into one flat tensor (as FlatAdam does), keeping its dtype."""
    params = list(agent.parameters())
    flat = torch.cat([p.detach().reshape(-1) for p in params])
    offset = 0
    for p in params:
        p.data = flat[offset:offset + p.numel()].view_as(p)
        offset += p.numel()
    return torch.nn.Parameter(flat)


def _batch(agent: ActorCritic, n: int, seed: int = 0) -> list[torch.Tensor]:
    """A float64 minibatch whose ratios fall inside and on both sides outside [1 - 0.2, 1 + 0.2]."""
    g = torch.Generator().manual_seed(seed)
    obs = torch.randn(n, agent.obs_dim, generator=g, dtype=torch.float64)
    with torch.no_grad():
        mean, value = agent(obs)
    actions = mean + 0.5 * torch.randn(n, agent.act_dim, generator=g, dtype=torch.float64)
    with torch.no_grad():
        logprob = agent.evaluate(obs, actions)[0]
    old_logprobs = logprob + 0.4 * torch.randn(n, generator=g, dtype=torch.float64)
    old_values = value + 0.3 * torch.randn(n, generator=g, dtype=torch.float64)  # some beyond the value clip
    returns, advantages = torch.randn(n, generator=g, dtype=torch.float64), torch.randn(n, generator=g,
                                                                                        dtype=torch.float64)
    advantages[:8] = 0.0
    return [obs, actions, old_logprobs, old_values, returns, advantages]


def _composed(agent: ActorCritic, coefs: LossCoefs, obs, actions, old_logprobs, old_values, returns, advantages):
    """The reference: ppo_cli.losses.minibatch_loss (ActorCritic.evaluate and the loss terms), differentiated by
    autograd."""
    config = Config(env_id="x", clip_coef=coefs.clip_coef, dual_clip=coefs.dual_clip, clip_vloss=coefs.clip_vloss,
                    ent_coef=coefs.ent_coef, vf_coef=coefs.vf_coef)
    return losses.minibatch_loss(agent, config, obs, actions, old_logprobs, old_values, returns, advantages)


@pytest.mark.parametrize("hidden", [(8, 8), (16,), (8, 6, 4)])
@pytest.mark.parametrize("clip_vloss, dual_clip, ent_coef", [
    (False, None, 0.0), (True, None, 0.0), (False, 3.0, 0.01), (True, 2.0, 0.003)])
@pytest.mark.parametrize("flat", [False, True])
@pytest.mark.parametrize("activation", ["tanh", "relu", "elu"])
def test_fused_loss_has_the_value_and_gradient_of_the_composed_loss(hidden, clip_vloss, dual_clip, ent_coef, flat,
                                                                    activation):
    agent = ActorCritic(5, 3, hidden, seed=1, init_log_std=-0.3, activation=activation).double()
    coefs = LossCoefs(0.2, dual_clip, clip_vloss, ent_coef, 0.25)
    batch = _batch(agent, 256)
    ref, ref_terms, ref_logratio = _composed(agent, coefs, *batch)
    params = list(agent.parameters())
    ref_grads = torch.autograd.grad(ref, params)
    ratio = ref_logratio.detach().exp()
    advantages = batch[-1]
    assert ((ratio < 0.8) & (advantages < 0)).sum() > 5 and ((ratio > 1.2) & (advantages > 0)).sum() > 5

    flat_param = _flatten(agent) if flat else None
    loss_fn = FusedLoss(agent, coefs, flat_param)
    loss, terms, logratio = loss_fn(*batch)
    assert not terms.requires_grad and not logratio.requires_grad
    torch.testing.assert_close(loss, ref.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(terms, ref_terms.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(logratio, ref_logratio.detach(), rtol=1e-12, atol=1e-12)
    for p in params:
        p.grad = torch.zeros_like(p)
    if flat:
        flat_param.grad = torch.zeros_like(flat_param)
    (2.0 * loss).backward()  # a scaled upstream gradient reaches the parameters scaled
    if flat:  # the flat gradient, cut into the parameters' shapes
        grads, offset = [], 0
        for p in params:
            grads.append(flat_param.grad[offset:offset + p.numel()].view_as(p))
            offset += p.numel()
    else:
        grads = [p.grad for p in params]
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, 2.0 * want, rtol=1e-10, atol=1e-12)


def test_each_call_keeps_its_own_gradient():
    agent = ActorCritic(5, 3, (8, 8), seed=1).double()
    coefs = LossCoefs(0.2, None, False, 0.0, 0.5)
    first, second = _batch(agent, 64, seed=0), _batch(agent, 64, seed=1)
    loss_fn = FusedLoss(agent, coefs)
    loss_a, loss_b = loss_fn(*first)[0], loss_fn(*second)[0]  # b's forward runs before a's backward
    grads_a = torch.autograd.grad(loss_a, list(agent.parameters()))
    want = torch.autograd.grad(_composed(agent, coefs, *first)[0], list(agent.parameters()))
    for got, ref in zip(grads_a, want):
        torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-12)
    assert loss_b.requires_grad


def test_fused_loss_refuses_what_it_cannot_compute():
    with pytest.raises(ValueError, match="Gaussian"):
        FusedLoss(ActorCritic(4, 2, (8,), discrete=True), LossCoefs(0.2, None, False, 0.0, 0.5))
    agent = ActorCritic(4, 2, (8,))
    with pytest.raises(ValueError, match="consecutive"):
        FusedLoss(agent, LossCoefs(0.2, None, False, 0.0, 0.5), torch.zeros(sum(p.numel() for p in agent.parameters())))


def test_flat_adam_lean_step_is_torch_adams_step_bit_for_bit():
    """lean_step calls the fused kernel itself; step() goes through torch.optim.Adam."""
    agents = [ActorCritic(5, 3, (8, 8), seed=0) for _ in range(2)]
    optimizers = [FlatAdam(agent, lr=1e-3, eps=1e-5) for agent in agents]
    g = torch.Generator().manual_seed(0)
    for step in range(5):
        grad = torch.randn(optimizers[0].flat.numel(), generator=g)
        for optimizer in optimizers:
            optimizer.zero_grad()
            optimizer.flat.grad += grad
            optimizer.param_groups[0]["lr"] = 1e-3 * (1 - step / 10)
        optimizers[0].lean_step()
        optimizers[1].step()
        assert torch.equal(optimizers[0].flat, optimizers[1].flat)
    state = [optimizer.state_dict()["state"][0] for optimizer in optimizers]
    assert all(torch.equal(state[0][key], state[1][key]) for key in ("step", "exp_avg", "exp_avg_sq"))
    assert not torch.equal(optimizers[0].flat, FlatAdam(ActorCritic(5, 3, (8, 8), seed=0), 1e-3, 1e-5).flat)


def test_flat_adam_clips_the_global_norm_like_torch():
    agent = ActorCritic(5, 3, (8, 8), seed=0)
    optimizer = FlatAdam(agent, lr=1e-3, eps=1e-5)
    g = torch.Generator().manual_seed(0)
    for scale in (1e-3, 10.0):  # below the limit: untouched; above: scaled to it
        grad = scale * torch.randn(optimizer.flat.numel(), generator=g)
        optimizer.zero_grad()
        optimizer.flat.grad += grad
        reference = [torch.nn.Parameter(p.detach().clone()) for p in agent.parameters()]
        for ref, p in zip(reference, agent.parameters()):
            ref.grad = p.grad.clone()
        torch.nn.utils.clip_grad_norm_(reference, 0.5)
        optimizer.clip_grad_norm_(0.5)
        for p, ref in zip(agent.parameters(), reference):
            torch.testing.assert_close(p.grad, ref.grad, rtol=1e-5, atol=1e-8)
        assert torch.linalg.vector_norm(optimizer.flat.grad) <= 0.5 + 1e-5
