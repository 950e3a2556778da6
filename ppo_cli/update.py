"""One PPO update over a rollout: epochs of shuffled minibatches, the KL early stop, the statistics.

Decisions, stated once (docs/algorithm.md repeats them):

* ``update_epochs`` passes over the batch in ``num_minibatches`` shuffled minibatches;
  advantages recomputed with the current critic before each epoch after the first
  (``--recompute-adv``); advantages normalised per minibatch (``--norm-adv``);
* KL early stop: before each minibatch's gradient step the KL estimate ``mean((r-1) - log r)`` of
  the current policy against the rollout policy is computed on that minibatch; if it exceeds
  ``target_kl`` that step and all remaining steps of the iteration are skipped.
  ``update_fraction`` is the share of planned steps that ran. The statistics average over every
  minibatch evaluated, including the one that stopped the update.
* The minibatch loss is :func:`ppo_cli.losses.minibatch_loss` (composed torch operations) or, for
  Gaussian policies, the same loss and gradient in one autograd node (:mod:`ppo_cli.fused`).
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from ppo_cli import fused, losses
from ppo_cli.agent import ActorCritic
from ppo_cli.config import Config
from ppo_cli.optim import FlatAdam, clip_and_step
from ppo_cli.rollout import RolloutStorage

log = logging.getLogger(__name__)

LossFn = Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class UpdateStats:
    """Averages over the minibatches evaluated in one iteration's update."""

    policy_loss: float
    value_loss: float
    entropy: float
    approx_kl: float
    clipfrac: float
    update_fraction: float
    action_std: float | None


def update_path(agent: ActorCritic, config: Config) -> str:
    """``"fused"`` or ``"autograd"``: what ``config.update`` means for ``agent`` (``auto``: fused where it
    applies; ``--compile``: autograd). Raises ``ValueError`` where fused was asked for and cannot be used."""
    if config.update == "autograd" or config.compile:
        return "autograd"
    problem = fused.unsupported(agent)
    if problem is None:
        return "fused"
    if config.update == "fused":
        raise ValueError(f"--update fused cannot compute this policy: {problem}; use --update autograd")
    return "autograd"


def make_loss_fn(agent: ActorCritic, config: Config, optimizer: torch.optim.Optimizer | None = None) -> LossFn:
    """The minibatch loss bound to ``agent`` and ``config`` (see :func:`update_path`).

    ``fused``: :class:`~ppo_cli.fused.FusedLoss`, the value and gradient of
    :func:`~ppo_cli.losses.minibatch_loss` in one autograd node, whose input is the optimizer's flat
    tensor where ``optimizer`` is a :class:`~ppo_cli.optim.FlatAdam`. ``autograd``:
    :func:`~ppo_cli.losses.minibatch_loss` itself, or with ``config.compile`` compiled by
    ``torch.compile`` at its first call; if compiling fails (no C compiler, an unsupported platform)
    the eager function is used from then on and a warning is logged.
    """
    if update_path(agent, config) == "fused":
        coefs = fused.LossCoefs(config.clip_coef, config.dual_clip, config.clip_vloss, config.ent_coef,
                                config.vf_coef)
        return fused.FusedLoss(agent, coefs, optimizer.flat if isinstance(optimizer, FlatAdam) else None)
    eager = functools.partial(losses.minibatch_loss, agent, config)
    if not config.compile:
        return eager
    compiled = torch.compile(eager, dynamic=False)
    current: list[LossFn] = [compiled]

    def loss_fn(*tensors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        try:
            return current[0](*tensors)
        except Exception as exc:  # inductor reports failures with many exception types
            if current[0] is eager:
                raise
            log.warning("torch.compile failed (%s: %s); training eagerly", type(exc).__name__, exc)
            current[0] = eager
            return eager(*tensors)

    return loss_fn


def flat_f32(array: np.ndarray) -> torch.Tensor:
    """``(num_steps, num_envs)`` float64 -> ``(num_steps * num_envs,)`` float32 tensor."""
    return torch.from_numpy(array.reshape(-1).astype(np.float32))


@torch.no_grad()
def recompute_advantages(agent: ActorCritic, storage: RolloutStorage, last_obs: np.ndarray,
                         config: Config) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE ``(advantages, returns)``, flattened, with values from the critic as it is now.

    Every stored observation, the truncated episodes' final observations and the observation after
    the rollout are evaluated in one batch; the rollout's rewards and episode ends are reused.
    """
    num_steps, num_envs = storage.values.shape
    n = num_steps * num_envs
    truncated = storage.truncated
    obs = np.concatenate([storage.obs.reshape(n, -1), last_obs, storage.final_obs[truncated]])
    values = agent.value(torch.from_numpy(obs)).numpy()
    current = values[:n].reshape(num_steps, num_envs)
    bootstrap = np.zeros_like(current)
    bootstrap[truncated] = values[n + num_envs:]
    advantages, returns = storage.gae(values[n:n + num_envs], config.gamma, config.gae_lambda, current, bootstrap)
    return flat_f32(advantages), flat_f32(returns)


def ppo_update(agent: ActorCritic, optimizer: torch.optim.Optimizer, batch: dict[str, torch.Tensor],
               config: Config, rng: np.random.Generator, loss_fn: LossFn | None = None,
               recompute: Callable[[], tuple[torch.Tensor, torch.Tensor]] | None = None) -> UpdateStats:
    """Run PPO's update passes over one rollout batch (tensors flattened to ``(batch_size, ...)``).

    Per epoch the batch is shuffled with one gather and cut into ``num_minibatches`` slices; with
    ``config.norm_adv`` the advantages of every minibatch are normalised (per minibatch) in one
    operation. ``recompute``, if given, returns fresh ``(advantages, returns)`` and is called
    before every epoch after the first (``--recompute-adv``). Diagnostics stay tensors until the
    end of the update and are reduced once. ``loss_fn`` defaults to :func:`make_loss_fn`'s
    eager choice.
    """
    loss_fn = loss_fn or make_loss_fn(agent, config.replace(compile=False), optimizer)
    n_mb, mb_size = config.num_minibatches, config.minibatch_size
    planned = config.update_epochs * n_mb
    keys = ("obs", "actions", "logprobs", "values", "returns")
    loss_log = torch.zeros(planned, 3)  # policy_loss, value_loss, entropy per minibatch
    logratio_log = torch.zeros(planned, mb_size)
    evaluated = steps = 0
    stopped = False
    for epoch_index in range(config.update_epochs):
        if recompute is not None and epoch_index > 0:
            batch = {**batch}
            batch["advantages"], batch["returns"] = recompute()
        order = torch.from_numpy(rng.permutation(config.batch_size))
        epoch = {k: batch[k].index_select(0, order) for k in keys}
        adv = batch["advantages"].index_select(0, order).view(n_mb, mb_size)
        if config.norm_adv and mb_size > 1:
            adv = (adv - adv.mean(1, keepdim=True)) / (adv.std(1, keepdim=True) + 1e-8)
        for i in range(n_mb):
            mb = slice(i * mb_size, (i + 1) * mb_size)
            loss, loss_terms, logratio = loss_fn(epoch["obs"][mb], epoch["actions"][mb], epoch["logprobs"][mb],
                                                 epoch["values"][mb], epoch["returns"][mb], adv[i])
            loss_log[evaluated] = loss_terms
            logratio_log[evaluated] = logratio
            evaluated += 1
            if config.target_kl is not None and losses.approx_kl(logratio).item() > config.target_kl:
                stopped = True
                break
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            clip_and_step(optimizer, config.max_grad_norm)
            steps += 1
        if stopped:
            break
    return _stats(agent, loss_log[:evaluated], logratio_log[:evaluated], config.clip_coef, steps / planned)


@torch.no_grad()
def _stats(agent: ActorCritic, loss_log: torch.Tensor, logratios: torch.Tensor, clip_coef: float,
           update_fraction: float) -> UpdateStats:
    """Reduce the per-minibatch logs ``(evaluated, 3)`` and ``(evaluated, minibatch)`` once."""
    policy_loss, value_loss, entropy_mean = loss_log.mean(0).tolist()
    approx_kl = float(losses.approx_kl(logratios))  # equal-sized minibatches: mean of their means
    clipfrac = float(losses.clip_fraction(torch.exp(logratios), clip_coef))
    action_std = None if agent.discrete else float(torch.exp(agent.log_std.detach()).mean())
    return UpdateStats(policy_loss, value_loss, entropy_mean, approx_kl, clipfrac, update_fraction, action_std)
