"""PPO's loss terms as pure functions of tensors (each returns a scalar mean over the batch).

* clipped surrogate (Schulman et al. 2017), as a loss to minimise:
  ``L = max(-A * r, -A * clip(r, 1 - eps, 1 + eps))``;
* dual clip (Ye et al. 2020), for ``A < 0`` only: ``L = min(L, -c * A)`` with ``c > 1``, i.e. the
  objective is bounded below by ``c * A`` so a huge ratio on a bad action cannot dominate;
* clipped value loss: ``0.5 * max((V - R)^2, (V_old + clip(V - V_old, -eps, eps) - R)^2)``, i.e.
  the larger of the unclipped and clipped squared errors (the same ``eps`` as the ratio clip);
  unclipped: ``0.5 * (V - R)^2``;
* KL estimate (Schulman's k3): ``mean((r - 1) - log r)``, always >= 0.

:class:`GaussianPPOLoss` is all of it for a Gaussian policy in one autograd node, its gradient
written out; training uses it, and it is tested equal to these functions composed by autograd.
"""

from __future__ import annotations

import torch

from ppo_cli.agent import LOG_2PI


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


def clip_fraction(ratio: torch.Tensor, clip_coef: float) -> torch.Tensor:
    """Fraction of samples whose ratio lies outside ``[1 - eps, 1 + eps]``."""
    return ((ratio - 1.0).abs() > clip_coef).float().mean()


class GaussianPPOLoss(torch.autograd.Function):
    """PPO's whole minibatch loss for a diagonal Gaussian policy, from the network's outputs, with
    its gradient written out: one autograd node instead of ~25 (the update's time goes to per-op
    overhead, not arithmetic). Same value and gradient as composing :func:`clipped_surrogate`,
    :func:`value_loss` and the entropy term with autograd (tested to float rounding).

    ``apply(mean (B, A), log_std (A,), value (B,), actions, old_logprobs, old_values, returns,
    advantages, clip_coef, dual_clip, clip_vloss, ent_coef, vf_coef)`` returns
    ``(loss, [policy_loss, value_loss, entropy], logratio)``; only ``loss`` is differentiable.

    Gradients, with ``w_i = dL/dlogp_i = -A_i r_i [lo_i <= r_i <= hi_i] / B`` (the clip written as
    ``clamp(r, lo, hi)``: for ``A > 0`` ``lo = -inf, hi = 1 + eps``, for ``A <= 0``
    ``lo = 1 - eps, hi = dual_clip or inf``) and ``z = (a - mean) / std``:
    ``dL/dmean = w z / std``, ``dL/dlog_std = sum_i w_i (z_i^2 - 1) - ent_coef``,
    ``dL/dV = vf_coef (V - R) / B`` (clipped: the error of whichever branch is larger, zero for
    the clipped branch outside the clip range).
    """

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, mean: torch.Tensor, log_std: torch.Tensor,
                value: torch.Tensor, actions: torch.Tensor, old_logprobs: torch.Tensor, old_values: torch.Tensor,
                returns: torch.Tensor, advantages: torch.Tensor, clip_coef: float, dual_clip: float | None,
                clip_vloss: bool, ent_coef: float, vf_coef: float) -> tuple[torch.Tensor, ...]:
        batch, act_dim = mean.shape
        inv_std = torch.exp(-log_std)
        z = (actions - mean) * inv_std
        log_std_sum = log_std.sum()
        logratio = -0.5 * (z * z).sum(1) - (log_std_sum + 0.5 * LOG_2PI * act_dim) - old_logprobs
        ratio = torch.exp(logratio)
        positive = advantages > 0
        lo = torch.full_like(ratio, 1.0 - clip_coef).masked_fill_(positive, -torch.inf)
        hi = torch.full_like(ratio, torch.inf if dual_clip is None else dual_clip).masked_fill_(positive,
                                                                                               1.0 + clip_coef)
        policy_loss = -(advantages * torch.clamp(ratio, lo, hi)).mean()
        err = value - returns
        if clip_vloss:
            delta = value - old_values
            clipped_err = old_values + torch.clamp(delta, -clip_coef, clip_coef) - returns
            sq, clipped_sq = err * err, clipped_err * clipped_err
            v_loss = 0.5 * torch.maximum(sq, clipped_sq).mean()
            d_value = torch.where(sq >= clipped_sq, err, clipped_err * (delta.abs() <= clip_coef))
        else:
            v_loss = 0.5 * (err * err).mean()
            d_value = err
        entropy = log_std_sum + (0.5 + 0.5 * LOG_2PI) * act_dim
        loss = policy_loss - ent_coef * entropy + vf_coef * v_loss

        w = advantages * ratio * ((ratio >= lo) & (ratio <= hi)) * (-1.0 / batch)
        wz = w.unsqueeze(1) * z
        ctx.save_for_backward(wz * inv_std, (wz * z).sum(0) - w.sum() - ent_coef, d_value * (vf_coef / batch))
        terms = torch.stack((policy_loss, v_loss, entropy))
        ctx.mark_non_differentiable(terms, logratio)
        return loss, terms, logratio

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad_loss: torch.Tensor, *_: torch.Tensor
                 ) -> tuple[torch.Tensor | None, ...]:
        d_mean, d_log_std, d_value = ctx.saved_tensors
        return (d_mean * grad_loss, d_log_std * grad_loss, d_value * grad_loss) + (None,) * 10
