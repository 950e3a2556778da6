"""Lean ``step`` functions for Gymnasium's planar MuJoCo locomotion tasks (Hopper, Walker2d, HalfCheetah).

Gymnasium's Python around the physics is a large share of a step's cost (``is_healthy`` evaluated
twice, ``state_vector``, properties, the info dict; ``docs/performance.md`` measures it). These functions
compute exactly what the v4 and v5 ``step`` methods compute, the same floating-point operations
in the same order, on the environment's own ``MjModel``/``MjData``, so observations, rewards and
terminations are bit-identical (tested step for step, through terminations, against
``env.step``), and :func:`matches_env_step` checks it again against the installed Gymnasium at the
start of every run. Resets, seeding, rendering and everything else stay Gymnasium's.

:func:`lean_step` returns ``None`` for anything it does not know exactly: other classes (also
subclasses, which may override ``step``) and environments with a ``render_mode``.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from ppo_cli.signals import signals_deferred

with signals_deferred():  # importing mujoco runs glfw's version check as a Python subprocess in the
    import mujoco  # terminal's process group: a Ctrl-C must not print that child's traceback

Step = Callable[[np.ndarray], tuple[np.ndarray, float, bool]]  # action -> (obs, reward, terminated)

# module of the env class -> (family, gymnasium version of the task)
_KNOWN = {
    "gymnasium.envs.mujoco.hopper_v4": ("hopper", 4), "gymnasium.envs.mujoco.hopper_v5": ("hopper", 5),
    "gymnasium.envs.mujoco.walker2d_v4": ("walker2d", 4), "gymnasium.envs.mujoco.walker2d_v5": ("walker2d", 5),
    "gymnasium.envs.mujoco.half_cheetah_v4": ("half_cheetah", 4),
    "gymnasium.envs.mujoco.half_cheetah_v5": ("half_cheetah", 5),
}
_CLASS_NAMES = {"hopper": "HopperEnv", "walker2d": "Walker2dEnv", "half_cheetah": "HalfCheetahEnv"}


def matches_env_step(make: Callable[[], Any], steps: int = 30, seed: int = 0) -> bool:
    """Whether :func:`lean_step` computes what ``env.step`` computes for environments from ``make``,
    bit for bit, over the first ``steps`` steps of an episode with random actions (checked once per
    run: a Gymnasium release that changes a task's ``step`` makes the trainer fall back to it)."""
    lean_env, plain_env = make(), make()
    try:
        lean = lean_step(lean_env)
        if lean is None:
            return False
        rng = np.random.default_rng(seed)
        lean_env.reset(seed=seed)
        plain_env.reset(seed=seed)
        low, high = plain_env.action_space.low, plain_env.action_space.high
        for _ in range(steps):
            action = rng.uniform(low, high).astype(plain_env.action_space.dtype)
            obs, reward, terminated = lean(action)
            want_obs, want_reward, want_terminated, _, _ = plain_env.step(action)
            if not (np.array_equal(obs, want_obs) and reward == want_reward and terminated == want_terminated):
                return False
            if terminated:
                break
        return True
    finally:
        lean_env.close()
        plain_env.close()


def lean_step(env: Any) -> Step | None:
    """A step function equivalent to ``env.step`` (without truncation and info), or ``None``."""
    cls = type(env)
    known = _KNOWN.get(cls.__module__)
    if known is None or cls.__name__ != _CLASS_NAMES[known[0]] or getattr(env, "render_mode", None) is not None:
        return None
    family, version = known
    model, data = env.model, env.data
    frame_skip, dt = env.frame_skip, env.dt
    forward_weight, ctrl_weight = env._forward_reward_weight, env._ctrl_cost_weight
    skip = 1 if env._exclude_current_positions_from_observation else 0
    qpos, qvel, ctrl = data.qpos, data.qvel, data.ctrl  # views into the simulator's state
    mj_step, mj_rne_post = mujoco.mj_step, mujoco.mj_rnePostConstraint
    add_reduce = np.add.reduce  # what np.sum calls, without its Python layer: the same sum

    def simulate(action: np.ndarray) -> float:
        x_before = qpos[0]
        ctrl[:] = action
        mj_step(model, data, nstep=frame_skip)
        mj_rne_post(model, data)
        return (qpos[0] - x_before) / dt

    if family == "half_cheetah":
        def step_cheetah(action: np.ndarray) -> tuple[np.ndarray, float, bool]:
            x_velocity = simulate(action)
            ctrl_cost = ctrl_weight * add_reduce(np.square(action))
            forward_reward = forward_weight * x_velocity
            obs = np.concatenate((qpos[skip:], qvel))
            return obs, forward_reward - ctrl_cost, False
        return step_cheetah

    healthy_weight = env._healthy_reward
    terminate = env._terminate_when_unhealthy
    min_z, max_z = env._healthy_z_range
    min_angle, max_angle = env._healthy_angle_range
    if family == "hopper":
        min_state, max_state = env._healthy_state_range

        def is_healthy() -> bool:
            z, angle = qpos[1], qpos[2]
            state = np.concatenate((qpos[2:], qvel))  # every element strictly inside: its min and max are
            return (min_state < state.min() and state.max() < max_state  # (a NaN fails like Gymnasium's)
                    and min_z < z < max_z and min_angle < angle < max_angle)
    else:
        def is_healthy() -> bool:
            z, angle = qpos[1], qpos[2]
            return (min_z < z < max_z) and (min_angle < angle < max_angle)

    def step_walker(action: np.ndarray) -> tuple[np.ndarray, float, bool]:
        x_velocity = simulate(action)
        healthy = is_healthy()
        if version == 4:
            healthy_reward = float(healthy or terminate) * healthy_weight
        else:
            healthy_reward = healthy * healthy_weight
        forward_reward = forward_weight * x_velocity
        ctrl_cost = ctrl_weight * add_reduce(np.square(action))
        obs = np.concatenate((qpos[skip:], np.minimum(np.maximum(qvel, -10.0), 10.0)))  # np.clip, leaner
        return obs, (forward_reward + healthy_reward) - ctrl_cost, (not healthy) and terminate
    return step_walker
