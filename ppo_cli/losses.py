"""PPO's loss terms as pure functions of tensors (each returns a scalar mean over the batch).

* clipped surrogate (Schulman et al. 2017), as a loss to minimise:
  ``L = max(-A * r, -A * clip(r, 1 - eps, 1 + eps))``;
* dual clip (Ye et al. 2020), for ``A < 0`` only: ``L = min(L, -c * A)`` with ``c > 1``, i.e. the
  objective is bounded below by ``c * A`` so a huge ratio on a bad action cannot dominate;
* clipped value loss: ``0.5 * max((V - R)^2, (V_old + clip(V - V_old, -eps, eps) - R)^2)``, i.e.
  the larger of the unclipped and clipped squared errors (the same ``eps`` as the ratio clip);
  unclipped: ``0.5 * (V - R)^2``;
* KL estimate (Schulman's k3): ``mean((r - 1) - log r)``, always >= 0;
* the total: ``policy_loss - ent_coef * entropy + vf_coef * value_loss`` (:func:`total_loss`).

:func:`minibatch_loss` composes them with the network's forward pass through torch autograd: the
reference PPO loss (``--update autograd``). The fused update (:mod:`ppo_cli.fused`) computes the
same terms and their gradient in one autograd node and is tested equal to it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from ppo_cli.agent import ActorCritic
    from ppo_cli.config import Config


def clipped_surrogate(ratio: torch.Tensor, advantages: torch.Tensor, clip_coef: float,
                      dual_clip: float | None = None) -> torch.Tensor:
    """Policy loss from probability ratios and advantages, both ``(batch,)``."""
    loss = torch.max(-advantages * ratio, -advantages * torch.clamp(ratio, 1.0 - clip_coef, 1.0 + clip_coef))
    if dual_clip is not None:
        loss = torch.where(advantages < 0, torch.min(loss, -dual_clip * advantages), loss)
    return loss.mean()


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor,
               clip_coef: float | None) -> torch.Tensor:
    """Value loss; clipped around ``old_values`` when ``clip_coef`` is given. ``(batch,)`` inputs."""
    unclipped = (values - returns) ** 2
    if clip_coef is None:
        return 0.5 * unclipped.mean()
    clipped = (old_values + torch.clamp(values - old_values, -clip_coef, clip_coef) - returns) ** 2
    return 0.5 * torch.max(unclipped, clipped).mean()


def approx_kl(logratio: torch.Tensor) -> torch.Tensor:
    """``mean((r - 1) - log r)`` with ``r = exp(logratio)``: an unbiased, non-negative KL estimate."""
    return ((torch.exp(logratio) - 1.0) - logratio).mean()


def total_loss(policy_loss: Any, value_loss: Any, entropy: Any, ent_coef: float, vf_coef: float) -> Any:
    """The loss minimised: ``policy_loss - ent_coef * entropy + vf_coef * value_loss`` (tensors or floats)."""
    return policy_loss - ent_coef * entropy + vf_coef * value_loss


def minibatch_loss(agent: ActorCritic, config: Config, obs: torch.Tensor, actions: torch.Tensor,
                   old_logprobs: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor,
                   advantages: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PPO's loss on one minibatch (advantages already normalised), all inputs ``(minibatch, ...)``.

    Returns ``(loss, [policy_loss, value_loss, entropy], logratio)``, the last two detached.
    """
    logprob, entropy, value = agent.evaluate(obs, actions)
    logratio = logprob - old_logprobs
    ratio = torch.exp(logratio)
    pg_loss = clipped_surrogate(ratio, advantages, config.clip_coef, config.dual_clip)
    v_loss = value_loss(value, old_values, returns, config.clip_coef if config.clip_vloss else None)
    ent = entropy.mean()
    loss = total_loss(pg_loss, v_loss, ent, config.ent_coef, config.vf_coef)
    return loss, torch.stack((pg_loss, v_loss, ent)).detach(), logratio.detach()


def clip_fraction(ratio: torch.Tensor, clip_coef: float) -> torch.Tensor:
    """Fraction of samples whose ratio lies outside ``[1 - eps, 1 + eps]``."""
    return ((ratio - 1.0).abs() > clip_coef).float().mean()
