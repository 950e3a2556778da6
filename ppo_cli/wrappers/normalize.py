"""Running statistics and the observation / reward filters built on them.

These are plain numpy objects applied to a batch of environments, not ``gymnasium.Wrapper``s: the
trainer calls them once per vectorised step, so no wrapper stack sits in the hot loop. Both
filters have a ``training`` flag; when it is off their statistics are frozen (evaluation).
Their state is explicit (``state_dict`` / ``load_state_dict``) and saved in every checkpoint.
"""

from __future__ import annotations

from typing import Any

import numpy as np

EPS = 1e-8  # added to the variance before the square root


def clip_(x: np.ndarray, bound: float) -> np.ndarray:
    """``np.clip(x, -bound, bound, out=x)`` with two ufunc calls: the same values (NaN stays NaN)
    without ``np.clip``'s Python dispatch, which costs more than the clipping on a few numbers."""
    np.minimum(x, bound, out=x)
    return np.maximum(x, -bound, out=x)


class RunningMeanStd:
    """Mean and variance of a stream of arrays, merged batch by batch in float64.

    Uses the parallel merge of Chan, Golub & LeVeque (1979): the statistics after any sequence of
    batches equal those of all the data at once (population variance, ``ddof=0``). Before any
    data, ``mean = 0`` and ``var = 1`` so that normalising is the identity.
    """

    def __init__(self, shape: tuple[int, ...] = ()) -> None:
        self.mean = np.zeros(shape, dtype=np.float64)
        self.var = np.ones(shape, dtype=np.float64)
        self.count = 0.0

    def update(self, batch: np.ndarray) -> None:
        """Add a batch of shape ``(n, *shape)``."""
        batch = np.asarray(batch, dtype=np.float64)
        n = batch.shape[0]
        if n == 1:  # the common single-environment case, without mean/var reductions
            self._merge(batch[0], 0.0, 1)
        elif n > 1:
            self._merge(batch.mean(axis=0), batch.var(axis=0), n)

    def _merge(self, batch_mean: np.ndarray, batch_var: np.ndarray | float, n: int) -> None:
        count = self.count
        total = count + n
        delta = batch_mean - self.mean
        m2 = self.var * count + batch_var * n + delta * delta * (count * n / total)
        self.mean = self.mean + delta * (n / total)
        self.var = m2 / total
        self.count = total

    @property
    def std(self) -> np.ndarray:
        return np.sqrt(self.var + EPS)

    def state_dict(self) -> dict[str, Any]:
        # np.array, not .copy(): 0-d statistics become numpy scalars after arithmetic
        return {"mean": np.array(self.mean, dtype=np.float64), "var": np.array(self.var, dtype=np.float64),
                "count": float(self.count)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        mean = np.asarray(state["mean"], dtype=np.float64)
        var = np.asarray(state["var"], dtype=np.float64)
        if mean.shape != self.mean.shape or var.shape != self.var.shape:
            raise ValueError(f"running statistics of shape {mean.shape} do not fit {self.mean.shape}")
        self.mean, self.var, self.count = mean.copy(), var.copy(), float(state["count"])


class ObservationNormalizer:
    """``clip((obs - mean) / sqrt(var + 1e-8), -clip, clip)`` with running statistics.

    ``__call__`` first adds the batch to the statistics (only while ``training``), then normalises
    it with the updated statistics. ``normalize`` never updates (used for the final observation of
    a truncated episode, which is bootstrapped with the same statistics). Disabled, it only casts.
    """

    def __init__(self, shape: tuple[int, ...], clip: float = 10.0, enabled: bool = True,
                 training: bool = True) -> None:
        self.rms = RunningMeanStd(shape)
        self.clip = clip
        self.enabled = enabled
        self.training = training

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        """Update (if training) and normalise a batch ``(n, *shape)``; returns float32."""
        if self.enabled and self.training:
            self.rms.update(obs)
        return self.normalize(obs)

    def normalize(self, obs: np.ndarray) -> np.ndarray:
        if not self.enabled:
            return np.asarray(obs, dtype=np.float32)
        out = (obs - self.rms.mean) / self.rms.std
        return clip_(out, self.clip).astype(np.float32)

    def state_dict(self) -> dict[str, Any]:
        return self.rms.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rms.load_state_dict(state)


class RewardNormalizer:
    """Scale rewards by the running std of the discounted return (no mean subtraction).

    Per environment it keeps ``ret = gamma * ret + r``; the statistics see every ``ret`` (while
    ``training``), the reward is returned as ``clip(r / sqrt(var(ret) + 1e-8), -clip, clip)``, and
    ``ret`` is reset to 0 where the episode ended (terminated or truncated).
    """

    def __init__(self, num_envs: int, gamma: float, clip: float = 10.0, enabled: bool = True,
                 training: bool = True) -> None:
        self.rms = RunningMeanStd(())
        self.returns = np.zeros(num_envs, dtype=np.float64)
        self.gamma = gamma
        self.clip = clip
        self.enabled = enabled
        self.training = training

    def __call__(self, reward: np.ndarray, done: np.ndarray) -> np.ndarray:
        """``reward`` and ``done`` of shape ``(num_envs,)``; returns float32 scaled rewards."""
        if not self.enabled:
            return np.asarray(reward, dtype=np.float32)
        if self.returns.shape[0] == 1:
            return self._call_one(reward, done)
        return self._call_many(reward, done)

    def _call_one(self, reward: np.ndarray, done: np.ndarray) -> np.ndarray:
        """:meth:`_call_many` for one environment: the same float64 arithmetic in the same order, on
        Python floats (bit-identical, tested), since numpy's per-call cost exceeds the arithmetic
        of one number and this runs once per environment step."""
        r = float(reward[0])
        ret = float(self.returns[0]) * self.gamma + r
        if self.training:
            self.rms._merge(ret, 0.0, 1)
        out = min(max(r / float(self.rms.std), -self.clip), self.clip)
        self.returns[0] = 0.0 if done[0] else ret
        return np.array([out], dtype=np.float32)

    def _call_many(self, reward: np.ndarray, done: np.ndarray) -> np.ndarray:
        self.returns = self.returns * self.gamma + reward
        if self.training:
            self.rms.update(self.returns)
        out = clip_(reward / self.rms.std, self.clip).astype(np.float32)
        self.returns[done] = 0.0
        return out

    def state_dict(self) -> dict[str, Any]:
        return {**self.rms.state_dict(), "returns": self.returns.copy()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rms.load_state_dict(state)
        returns = np.asarray(state["returns"], dtype=np.float64)
        if returns.shape != self.returns.shape:
            raise ValueError(f"reward filter saved for {returns.shape[0]} envs, have {self.returns.shape[0]}")
        self.returns = returns.copy()
