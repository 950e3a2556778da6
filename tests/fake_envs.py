"""Tiny environments for tests: importable as 'tests.fake_envs:NAME'."""

from __future__ import annotations

import os

import gymnasium as gym
import numpy as np


class PointEnv(gym.Env):
    """Move a point on a line towards 0. Terminates when |x| > 5, truncates after 50 steps."""

    metadata = {"render_modes": []}

    def __init__(self, render_mode: str | None = None, nan_after: int | None = None) -> None:
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (2,), np.float64)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
        self.render_mode = render_mode
        self.nan_after = nan_after
        self.total = 0
        self.x = 0.0
        self.t = 0

    def _obs(self) -> np.ndarray:
        return np.array([self.x, self.t / 50.0])

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.x = float(self.np_random.uniform(-2, 2))
        self.t = 0
        return self._obs(), {}

    def step(self, action):
        self.x += float(action[0])
        self.t += 1
        self.total += 1
        reward = -abs(self.x)
        if self.nan_after is not None and self.total > self.nan_after:
            reward = float("nan")
        return self._obs(), reward, abs(self.x) > 5, self.t >= 50, {}


class LegacyRandomEnv(PointEnv):
    """PointEnv drawing each episode's start from a legacy ``numpy.random.RandomState``, as dm_control does."""

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        if seed is not None or not isinstance(self._np_random, np.random.RandomState):
            self._np_random = np.random.RandomState(seed)
        self.x = float(self.np_random.uniform(-2, 2))
        self.t = 0
        return self._obs(), {}


def point_factory() -> gym.Env:
    return PointEnv()


class MultiDiscreteEnv(gym.Env):
    """An action space ppo does not support."""

    def __init__(self, render_mode: str | None = None) -> None:
        self.observation_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.action_space = gym.spaces.MultiDiscrete([2, 3])

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(2, np.float32), {}

    def step(self, action):
        return np.zeros(2, np.float32), 0.0, False, False, {}


NOT_CALLABLE = 42


def nan_after_600() -> gym.Env:
    """PointEnv whose rewards become NaN after 600 steps."""
    return PointEnv(nan_after=600)


class NanForSeedEnv(PointEnv):
    """PointEnv that returns NaN rewards 600 steps in, only when first reset with the seed in
    $PPO_TEST_NAN_ENV_SEED: one training seed of several goes bad, the others stay healthy."""

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        if seed is not None and str(seed) == os.environ.get("PPO_TEST_NAN_ENV_SEED"):
            self.nan_after = 600
        return super().reset(seed=seed, options=options)


class HangingEnv(PointEnv):
    """PointEnv whose 300th step (over the process's life) sleeps for an hour: a hung simulator."""

    def step(self, action):
        if self.total == 300:
            import time

            time.sleep(3600)
        return super().step(action)


class StubbornHangingEnv(PointEnv):
    """PointEnv whose 300th step hangs and swallows every exception raised to interrupt it."""

    def step(self, action):
        if self.total == 300:
            import time

            while True:
                try:
                    time.sleep(3600)
                except BaseException:  # noqa: BLE001 - the point of this environment
                    pass
        return super().step(action)


def exits():
    """A factory that ends the program instead of returning an environment."""
    import sys

    sys.exit(0)


def point_with_time_limit() -> gym.Env:
    """PointEnv inside gymnasium's TimeLimit of 20 steps: a declared time limit (PointEnv's own 50 is not one)."""
    return gym.wrappers.TimeLimit(PointEnv(), max_episode_steps=20)
