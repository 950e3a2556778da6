"""Preallocated rollout storage and generalised advantage estimation (GAE).

How episode ends are treated (the well-known libraries differ here):

* termination (the task ended, e.g. the hopper fell): the next state's value is 0;
* truncation (a time limit cut the episode): the episode did not end for the task, so the step is
  bootstrapped with ``V(final observation)``, normalised with the same statistics as the step's
  own observation; it is *not* treated as a termination;
* either way the advantage recursion stops there: the next stored step belongs to a new episode.
"""

from __future__ import annotations

import math

import numpy as np


class RolloutStorage:
    """Arrays of shape ``(num_steps, num_envs, ...)``, allocated once and refilled every iteration.

    ``bootstrap_values[t, e]`` holds ``V(final observation)`` where step ``t`` of env ``e`` was
    truncated (and ``final_obs[t, e]`` that observation, normalised, for recomputing it);
    :meth:`next_values` combines it with the stored values.
    """

    def __init__(self, num_steps: int, num_envs: int, obs_dim: int, action_shape: tuple[int, ...]) -> None:
        shape = (num_steps, num_envs)
        self.obs = np.zeros(shape + (obs_dim,), dtype=np.float32)
        self.actions = np.zeros(shape + action_shape, dtype=np.float32)
        self.logprobs = np.zeros(shape, dtype=np.float32)
        self.values = np.zeros(shape, dtype=np.float32)
        self.rewards = np.zeros(shape, dtype=np.float32)
        self.terminated = np.zeros(shape, dtype=bool)
        self.truncated = np.zeros(shape, dtype=bool)
        self.bootstrap_values = np.zeros(shape, dtype=np.float32)
        self.final_obs = np.zeros(shape + (obs_dim,), dtype=np.float32)  # normalised, where truncated

    def next_values(self, last_value: np.ndarray, values: np.ndarray | None = None,
                    bootstrap_values: np.ndarray | None = None) -> np.ndarray:
        """``V(s_{t+1})`` for every step: the next stored value, ``last_value`` after the last step,
        ``V(final observation)`` where the step was truncated. Shape ``(num_steps, num_envs)``.

        ``values`` and ``bootstrap_values`` default to the stored ones (the rollout's critic);
        others (a later critic's) can be given.
        """
        values = self.values if values is None else values
        bootstrap_values = self.bootstrap_values if bootstrap_values is None else bootstrap_values
        nxt = np.empty_like(values)
        nxt[:-1] = values[1:]
        nxt[-1] = last_value
        return np.where(self.truncated, bootstrap_values, nxt)

    def gae(self, last_value: np.ndarray, gamma: float, gae_lambda: float, values: np.ndarray | None = None,
            bootstrap_values: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """:func:`gae` over the stored rollout, with the stored values or the given ones (see :meth:`next_values`)."""
        values = self.values if values is None else values
        return gae(self.rewards, values, self.next_values(last_value, values, bootstrap_values), self.terminated,
                   self.terminated | self.truncated, gamma, gae_lambda)


def gae(rewards: np.ndarray, values: np.ndarray, next_values: np.ndarray, terminated: np.ndarray,
        dones: np.ndarray, gamma: float, gae_lambda: float) -> tuple[np.ndarray, np.ndarray]:
    """Generalised advantage estimation over ``(num_steps, num_envs)`` arrays.

    ``delta_t = r_t + gamma * (1 - terminated_t) * next_value_t - value_t``
    ``A_t = delta_t + gamma * lambda * (1 - done_t) * A_{t+1}``, with ``done = terminated or truncated``.

    Returns ``(advantages, returns)`` in float64, where ``returns = advantages + values`` are the
    value targets.
    """
    values = values.astype(np.float64)
    deltas = rewards + gamma * next_values * (1.0 - terminated) - values
    coefs = gamma * gae_lambda * (1.0 - dones)
    num_steps, num_envs = deltas.shape
    advantages = np.empty_like(deltas)
    for env in range(num_envs):  # scalar Python loop: faster than row-wise numpy for small rows
        delta, coef = deltas[:, env].tolist(), coefs[:, env].tolist()
        out = [0.0] * num_steps
        last = 0.0
        for t in range(num_steps - 1, -1, -1):
            last = delta[t] + coef[t] * last
            out[t] = last
        advantages[:, env] = out
    return advantages, advantages + values


def explained_variance(values: np.ndarray, returns: np.ndarray) -> float:
    """``1 - Var(returns - values) / Var(returns)``; NaN when the returns have no variance."""
    var = float(np.var(returns))
    return math.nan if var == 0.0 else 1.0 - float(np.var(returns - values)) / var
