"""Environment names and the one place where training environments are built.

Names: an alias (``hopper`` -> the newest registered ``Hopper-v*``), any registered Gymnasium id
(``Hopper-v4``), or ``package.module:attr`` naming an environment class or factory of the user's.

Trust: building a ``module:attr`` environment imports that module and calls that attribute, which
runs its code. A name the user types is theirs to run; a name read from a file (a checkpoint,
``config.json``, ``run.json``) is refused by :func:`require_trusted` unless the user confirms it
(``--trust-env``, or by naming the environment themselves), so loading a checkpoint someone sent
never runs code. Registered Gymnasium ids (no ``:``) are built from Gymnasium's registry only.

Stepping: :class:`EnvBatch` holds ``num_envs`` environments and steps them in one Python loop.
The stack it builds, in order, from inside out:

1. the environment as registered (``gymnasium.make``) or as the user's factory returns it;
2. Gymnasium's generic outer wrappers ``PassiveEnvChecker``, ``OrderEnforcing`` and ``TimeLimit``
   are peeled off (they cost time on every step); the time limit they enforced is applied by
   :class:`EnvBatch` itself with the same semantics (``truncated`` once ``max_episode_steps`` steps
   have passed, unless the step also terminated). Any other wrapper stays in place;
3. actions are clipped to the ``Box`` bounds just before ``step`` (the policy samples unclipped);
4. an episode that ends is reset at once (same-step autoreset) and its final observation is
   returned separately, so a truncated episode can be bootstrapped from it.

Resuming mid-episode: :meth:`EnvBatch.state_dict` keeps, per environment, how its current episode
began (the reset seed, or the state of the environment's random generator just before the reset)
and the actions taken since. :meth:`EnvBatch.load_state_dict` resets the same way and replays the
actions, which reproduces the state exactly for deterministic simulators (MuJoCo, classic control)
with no environment-specific code. ``exact`` tells whether the replay arrived at the saved
observation.

Observation and reward filters are not wrappers: the trainer applies them to whole batches
(:mod:`ppo_cli.wrappers`).
"""

from __future__ import annotations

import copy
import difflib
import importlib
import inspect
import math
import os
from dataclasses import dataclass, replace
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.envs.registration import find_highest_version, registry
from gymnasium.wrappers import OrderEnforcing, PassiveEnvChecker, TimeLimit

from ppo_cli import dmc
from ppo_cli.lean_step import lean_step, matches_env_step

# alias -> Gymnasium environment name (without version)
ALIASES: dict[str, str] = {
    "hopper": "Hopper",
    "halfcheetah": "HalfCheetah",
    "walker2d": "Walker2d",
    "ant": "Ant",
    "humanoid": "Humanoid",
    "humanoid-standup": "HumanoidStandup",
    "swimmer": "Swimmer",
    "reacher": "Reacher",
    "pusher": "Pusher",
    "inverted-pendulum": "InvertedPendulum",
    "inverted-double-pendulum": "InvertedDoublePendulum",
    "pendulum": "Pendulum",
    "mountaincar-continuous": "MountainCarContinuous",
    "lunarlander-continuous": "LunarLanderContinuous",
    "bipedalwalker": "BipedalWalker",
    "cartpole": "CartPole",
    "acrobot": "Acrobot",
}


class EnvError(ValueError):
    """An environment that cannot be found, imported or trained on."""


class UntrustedEnv(EnvError):
    """A ``module:attr`` environment named by a file, which the user has not confirmed."""


def is_entry_point(env_id: str) -> bool:
    """Whether ``env_id`` names Python code to import (``module:attr``) rather than a registered id."""
    return ":" in env_id and not dmc.is_dmc(env_id)


def require_trusted(env_id: str, source: str, trusted: bool = False, env_option: bool = False) -> None:
    """Raise :class:`UntrustedEnv` when ``env_id``, read from ``source``, is an entry point the user has
    not confirmed (``trusted``); registered Gymnasium ids always pass. ``env_option``: the command
    also takes ``--env``, which the message then mentions."""
    if trusted or not is_entry_point(env_id):
        return
    also = f" (or name it yourself: --env {env_id})" if env_option else ""
    raise UntrustedEnv(f"{source} names the environment {env_id!r}, a Python entry point: building it would "
                       f"import and run that code. If you trust it, pass --trust-env{also}")


def alias_table() -> list[tuple[str, str]]:
    """``(alias, resolved id)`` pairs; the id is ``-`` where the environment is not registered."""
    rows = []
    for alias, name in ALIASES.items():
        version = find_highest_version(None, name)
        rows.append((alias, f"{name}-v{version}" if version is not None else "-"))
    return rows


def resolve_env_id(name: str) -> str:
    """Turn a user's environment name into a Gymnasium id or a checked ``module:attr`` string."""
    name = name.strip()
    if dmc.is_dmc(name):
        try:
            return dmc.resolve(name)
        except dmc.DMCError as exc:
            raise EnvError(str(exc)) from None
    if ":" in name:
        _load_entry_point(name)
        return name
    base = ALIASES.get(name.lower(), name)
    if base in registry:
        return base
    version = find_highest_version(None, base)
    if version is not None:
        return f"{base}-v{version}"
    candidates = list(ALIASES) + [env_id for env_id in registry if "/" not in env_id]
    close = difflib.get_close_matches(name.lower(), [c.lower() for c in candidates], n=3, cutoff=0.6)
    lookup = {c.lower(): c for c in candidates}
    hint = f"; did you mean {', '.join(lookup[c] for c in close)}?" if close else ""
    raise EnvError(f"unknown environment {name!r}{hint} (`ppo envs` lists the aliases; any "
                   f"registered Gymnasium id or 'package.module:attr' works too)")


def _load_entry_point(spec: str) -> Any:
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise EnvError(f"{spec!r} is not of the form 'package.module:attr'")
    try:
        module = importlib.import_module(module_name)
    except SystemExit as exc:
        raise EnvError(f"importing module {module_name!r} of {spec!r} called sys.exit({exc.code!r})") from None
    except Exception as exc:  # an import can fail in any way; report it in one line
        raise EnvError(f"cannot import module {module_name!r} of {spec!r}: {type(exc).__name__}: {exc}") from exc
    try:
        target = module
        for part in attr.split("."):
            target = getattr(target, part)
    except AttributeError:
        raise EnvError(f"module {module_name!r} has no attribute {attr!r}") from None
    if inspect.isbuiltin(target) or not callable(target):
        kind = "a built-in function" if inspect.isbuiltin(target) else type(target).__name__
        raise EnvError(f"{spec!r} is not a class or factory (got {kind})")
    return target


class ActionRepeat(gym.Wrapper):
    """Hold each action for ``repeat`` steps of the environment, summing their rewards; an episode
    that ends inside the repeat ends the step (its time limit, inside this wrapper, counts frames)."""

    def __init__(self, env: gym.Env, repeat: int) -> None:
        super().__init__(env)
        self.repeat = repeat
        if env.metadata.get("render_fps"):  # a frame per step: the clip plays at the real speed
            self.metadata = {**env.metadata, "render_fps": env.metadata["render_fps"] / repeat}

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        total = 0.0
        for _ in range(self.repeat):
            obs, reward, terminated, truncated, info = self.env.step(action)
            total += float(reward)
            if terminated or truncated:
                break
        return obs, total, terminated, truncated, info


def make_env(env_id: str, render_mode: str | None = None, action_repeat: int = 1) -> gym.Env:
    """Build one environment from a resolved id (see :func:`resolve_env_id`), in :class:`ActionRepeat`
    when ``action_repeat`` > 1."""
    env = _build(env_id, render_mode)
    return ActionRepeat(env, action_repeat) if action_repeat > 1 else env


def _build(env_id: str, render_mode: str | None) -> gym.Env:
    if dmc.is_dmc(env_id):
        try:
            return dmc.make(env_id, render_mode)
        except dmc.DMCError as exc:
            raise EnvError(str(exc)) from None
        except Exception as exc:
            raise EnvError(f"cannot make {env_id!r}: {type(exc).__name__}: {exc}") from exc
    if ":" in env_id:
        factory = _load_entry_point(env_id)
        try:
            env = factory(render_mode=render_mode) if render_mode else factory()
        except SystemExit as exc:
            raise EnvError(f"{env_id!r} called sys.exit({exc.code!r}) instead of returning an environment") from None
        except Exception as exc:
            raise EnvError(f"{env_id!r} failed to build an environment: {type(exc).__name__}: {exc}") from exc
        if not isinstance(env, gym.Env):
            raise EnvError(f"{env_id!r} returned {type(env).__name__}, not a gymnasium.Env")
        return env
    try:
        return gym.make(env_id, render_mode=render_mode)
    except (gym.error.Error, ImportError) as exc:  # not registered; a missing extra (Box2D, MuJoCo)
        raise EnvError(f"cannot make {env_id!r}: {exc}") from exc
    except Exception as exc:  # a registered environment that fails to build here (versions that clash)
        raise EnvError(f"cannot make {env_id!r}: {type(exc).__name__}: {exc}") from exc


def probe_spaces(env_id: str) -> EnvSpaces:
    """Build one environment of ``env_id`` to check that it builds and fits ppo; returns its spaces."""
    env = make_env(env_id)
    try:
        return replace(check_spaces(env, env_id), time_limit=time_limit(env))
    finally:
        env.close()


@dataclass(frozen=True)
class EnvSpaces:
    """What the agent needs to know of an environment."""

    obs_dim: int
    act_dim: int  # action vector length, or number of discrete actions
    discrete: bool
    action_low: np.ndarray | None
    action_high: np.ndarray | None
    time_limit: int | None = None  # frames (see :func:`time_limit`); found by :func:`probe_spaces`


def check_spaces(env: gym.Env, env_id: str) -> EnvSpaces:
    """Accept a flat ``Box`` observation space and a ``Box`` or ``Discrete`` action space."""
    return spaces_of(env.observation_space, env.action_space, env_id)


def spaces_of(obs_space: gym.Space, act_space: gym.Space, env_id: str) -> EnvSpaces:
    """:func:`check_spaces` for a pair of spaces."""
    if not isinstance(obs_space, gym.spaces.Box) or len(obs_space.shape) != 1:
        raise EnvError(f"{env_id}: observation space {obs_space} is not supported; "
                       f"ppo needs a flat Box observation space")
    if isinstance(act_space, gym.spaces.Box) and len(act_space.shape) == 1:
        return EnvSpaces(obs_space.shape[0], act_space.shape[0], False,
                         act_space.low.astype(np.float64), act_space.high.astype(np.float64))
    if isinstance(act_space, gym.spaces.Discrete):
        return EnvSpaces(obs_space.shape[0], int(act_space.n), True, None, None)
    raise EnvError(f"{env_id}: action space {act_space} is not supported; "
                   f"ppo handles Box (Gaussian policy) and Discrete (categorical policy)")


def _peel(env: gym.Env) -> tuple[gym.Env, int | None]:
    """Remove the generic outer wrappers; return the inner env and the time limit they enforced."""
    max_steps = None
    while isinstance(env, (TimeLimit, OrderEnforcing, PassiveEnvChecker)):
        if isinstance(env, TimeLimit):
            max_steps = env._max_episode_steps
        env = env.env
    return env, max_steps


def time_limit(env: gym.Env) -> int | None:
    """Frames after which an episode of ``env`` is truncated: its ``TimeLimit``'s, or the step limit of the
    dm_control environment inside Shimmy's; None where neither is found."""
    while isinstance(env, gym.Wrapper):
        if isinstance(env, TimeLimit):
            return int(env._max_episode_steps)
        env = env.env
    limit = getattr(getattr(env, "_env", None), "_step_limit", None)
    return int(limit) if isinstance(limit, (int, float)) and math.isfinite(limit) else None


def episode_horizon(limit: int | None, env_id: str, action_repeat: int = 1) -> int:
    """The agent's steps in an episode that runs to the time limit of ``limit`` frames (held
    ``action_repeat`` at a time); an :class:`EnvError` where there is none, which ``--stagger-resets`` needs."""
    if limit is None:
        raise EnvError(f"--stagger-resets cuts first episodes within the time limit, and {env_id} declares none "
                       f"(wrap it in gymnasium.wrappers.TimeLimit)")
    return -(-limit // action_repeat)


def rng_state(env: gym.Env) -> Any:
    """The state of the generator an environment draws its next episode's start from.

    Gymnasium's ``np_random`` is a ``numpy.random.Generator``; dm_control and older code use a legacy
    ``numpy.random.RandomState``, which has no ``bit_generator``: its state is kept as
    ``{"random_state": RandomState.get_state(legacy=False)}``.
    """
    rng = env.unwrapped.np_random
    if isinstance(rng, np.random.RandomState):
        return {"random_state": rng.get_state(legacy=False)}
    return rng.bit_generator.state


def set_rng_state(env: gym.Env, state: Any) -> None:
    """Restore :func:`rng_state` in place, so whatever holds the environment's generator sees it."""
    rng = env.unwrapped.np_random
    legacy = isinstance(state, dict) and "random_state" in state
    if legacy != isinstance(rng, np.random.RandomState):
        kind = "a RandomState" if legacy else "a Generator"
        raise EnvError(f"the saved random state is {kind}'s, but the environment draws from {type(rng).__name__}")
    if legacy:
        rng.set_state(state["random_state"])
    else:
        rng.bit_generator.state = state


class EnvBatch:
    """``num_envs`` environments stepped in one loop, with time limits and same-step autoreset.

    ``step`` returns preallocated buffers that the next call overwrites: copy what you keep.
    Raw (unfiltered) episode returns and lengths of finished episodes collect in ``finished``.
    """

    def __init__(self, env_id: str, num_envs: int, seeds: list[int], action_repeat: int = 1,
                 stagger: bool = False) -> None:
        if len(seeds) != num_envs:
            raise ValueError(f"need {num_envs} seeds, got {len(seeds)}")
        made = [make_env(env_id, action_repeat=action_repeat) for _ in range(num_envs)]
        self.spaces = check_spaces(made[0], env_id)
        peeled = [_peel(env) for env in made]
        self.envs = [env for env, _ in peeled]
        self.lean_steps = [lean_step(env) for env in self.envs]  # None: the env's own step
        self.notes: list[str] = []  # what the user should know about how the environments are stepped
        lean = any(step is not None for step in self.lean_steps)
        if lean and not matches_env_step(lambda: _peel(make_env(env_id))[0]):
            self.lean_steps = [None] * num_envs
            self.notes.append(f"this Gymnasium's {env_id} step differs from ppo's lean MuJoCo step; using env.step")
        self.max_episode_steps = peeled[0][1]
        self.seeds = list(seeds)
        self.num_envs = num_envs
        n, d = num_envs, self.spaces.obs_dim
        self.obs = np.zeros((n, d), dtype=np.float64)
        self.final_obs = np.zeros((n, d), dtype=np.float64)
        self.rewards = np.zeros(n, dtype=np.float64)
        self.terminated = np.zeros(n, dtype=bool)
        self.truncated = np.zeros(n, dtype=bool)
        self.episode_return = np.zeros(n, dtype=np.float64)
        self.episode_length = np.zeros(n, dtype=np.int64)
        self.finished: list[tuple[float, int]] = []  # (raw return, length)
        # how each current episode began, and its actions so far (for an exact resume by replay)
        self.episode_start: list[dict[str, Any]] = [{"seed": s, "rng": None} for s in self.seeds]
        self.episode_actions: list[list[np.ndarray]] = [[] for _ in range(num_envs)]
        self.exact = True
        # --stagger-resets: environment i's first episode is cut after cuts[i] steps, drawn from its seed
        self.stagger = stagger
        self.cuts = np.zeros(num_envs, dtype=np.int64)
        if stagger:
            horizon = episode_horizon(time_limit(made[0]), env_id, action_repeat)
            self.cuts[:] = [np.random.default_rng([s, 1]).integers(1, horizon + 1) for s in self.seeds]
        self.first = np.full(num_envs, stagger)  # still in the first episode (only matters with stagger)

    def reset(self) -> np.ndarray:
        """First reset, seeding each environment; returns observations ``(num_envs, obs_dim)``."""
        for i, env in enumerate(self.envs):
            self.obs[i] = env.reset(seed=self.seeds[i])[0]
            self.episode_start[i] = {"seed": self.seeds[i], "rng": None}
            self.episode_actions[i] = []
        self.episode_return[:] = 0.0
        self.episode_length[:] = 0
        self.first[:] = self.stagger
        return self.obs

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Step every environment; returns ``(obs, rewards, terminated, truncated, final_obs)``.

        ``obs`` already holds the first observation of the next episode where one ended;
        ``final_obs[i]`` is the last observation of that ended episode (meaningful only there).
        """
        spaces = self.spaces
        if not spaces.discrete:
            actions = np.minimum(np.maximum(actions, spaces.action_low), spaces.action_high)  # np.clip, leaner
        max_steps, staggered = self.max_episode_steps, self.stagger and bool(self.first.any())
        for i, env in enumerate(self.envs):
            action = actions[i]
            self.episode_actions[i].append(action)
            lean = self.lean_steps[i]
            if lean is None:
                obs, reward, terminated, truncated, _ = env.step(action)
            else:
                (obs, reward, terminated), truncated = lean(action), False
            self.episode_return[i] += reward
            length = self.episode_length[i] + 1
            self.episode_length[i] = length
            if max_steps is not None and length >= max_steps:
                truncated = True
            cut = staggered and self.first[i] and length >= self.cuts[i] and not (terminated or truncated)
            truncated = truncated or cut
            self.rewards[i] = reward
            self.terminated[i] = terminated
            self.truncated[i] = truncated and not terminated
            if terminated or truncated:
                self.final_obs[i] = obs
                if not cut:  # a cut first episode is not one of the task's episodes
                    self.finished.append((float(self.episode_return[i]), int(length)))
                self.first[i] = False
                self.episode_return[i] = 0.0
                self.episode_length[i] = 0
                self.episode_start[i] = {"seed": None, "rng": rng_state(env)}
                self.episode_actions[i] = []
                obs = env.reset()[0]
            self.obs[i] = obs
        return self.obs, self.rewards, self.terminated, self.truncated, self.final_obs

    def state_dict(self) -> dict[str, Any]:
        """How each current episode began, its actions so far and the current raw observations."""
        shape = () if self.spaces.discrete else (self.spaces.act_dim,)
        dtype = np.int64 if self.spaces.discrete else np.float64
        actions = [np.array(a, dtype=dtype).reshape((len(a),) + shape) for a in self.episode_actions]
        return {"episode_start": copy.deepcopy(self.episode_start), "actions": actions, "obs": self.obs.copy(),
                "first": self.first.copy()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Bring every environment to the saved point of its episode by resetting and replaying."""
        for i, env in enumerate(self.envs):
            start = state["episode_start"][i]
            if start["seed"] is not None:
                obs = env.reset(seed=int(start["seed"]))[0]
            else:
                env.reset(seed=self.seeds[i])  # the environment makes its generator (of its own kind)
                set_rng_state(env, start["rng"])
                obs = env.reset()[0]
            actions = [np.asarray(a) for a in state["actions"][i]]
            total = 0.0
            for action in actions:
                obs, reward, _, _, _ = env.step(action)
                total += reward
            self.obs[i] = obs
            self.episode_return[i] = total
            self.episode_length[i] = len(actions)
            self.episode_start[i] = dict(start)
            self.episode_actions[i] = actions
        self.first[:] = state.get("first", False)  # a checkpoint from before --stagger-resets: no cut
        self.exact = bool(np.array_equal(self.obs, np.asarray(state["obs"])))

    def close(self) -> None:
        for env in self.envs:
            env.close()


def check_backend(env_id: str, backend: str) -> None:
    """Raise :class:`EnvError` unless ``backend`` can step ``env_id`` here."""
    if backend == "gymnasium":
        return
    try:
        import envpool
    except ImportError:
        raise EnvError("envpool is not installed; pip install -c constraints.txt -e '.[fast]' "
                       "(or use --backend gymnasium)") from None
    tasks = envpool.list_all_envs()
    if env_id not in tasks:
        close = difflib.get_close_matches(env_id, tasks, n=3, cutoff=0.5)
        hint = f"; close: {', '.join(close)}" if close else ""
        raise EnvError(f"envpool has no task {env_id!r}{hint} (use --backend gymnasium for any environment)")


def make_env_batch(env_id: str, num_envs: int, seeds: list[int], backend: str = "gymnasium",
                   action_repeat: int = 1, stagger: bool = False) -> EnvBatch | EnvPoolBatch:
    """The environment batch of a training run: Gymnasium environments in one loop, or envpool."""
    if backend == "envpool":
        check_backend(env_id, backend)
        return EnvPoolBatch(env_id, num_envs, seeds[0] % 2**31)  # envpool takes an int32 seed
    return EnvBatch(env_id, num_envs, seeds, action_repeat, stagger)


class EnvPoolBatch:
    """:class:`EnvBatch`'s interface over envpool: the C++ environments step on worker threads.

    envpool resets a finished environment on the *next* step (returning reward 0); this class
    keeps :class:`EnvBatch`'s same-step autoreset by stepping just the finished environments
    once more right away, so ``obs`` already holds their new first observation and ``final_obs``
    the last one. Time limits are envpool's own (the task's ``max_episode_steps``). Its MuJoCo tasks
    match Gymnasium's to rounding (tested). Environments cannot be replayed: after a resume they
    start new episodes (``exact`` is False).
    """

    def __init__(self, env_id: str, num_envs: int, seed: int) -> None:
        import envpool

        self.pool = envpool.make(env_id, env_type="gymnasium", num_envs=num_envs, seed=seed,
                                 num_threads=min(num_envs, os.cpu_count() or 1))
        self.spaces = spaces_of(self.pool.observation_space, self.pool.action_space, env_id)
        self.num_envs = num_envs
        self.max_episode_steps = int(self.pool.config["max_episode_steps"])
        n, d = num_envs, self.spaces.obs_dim
        self.obs = np.zeros((n, d), dtype=np.float64)
        self.final_obs = np.zeros((n, d), dtype=np.float64)
        self.episode_return = np.zeros(n, dtype=np.float64)
        self.episode_length = np.zeros(n, dtype=np.int64)
        self.finished: list[tuple[float, int]] = []
        self._idle = np.zeros((n,) if self.spaces.discrete else (n, self.spaces.act_dim),
                              dtype=np.int64 if self.spaces.discrete else np.float64)
        self.exact = True
        self.notes: list[str] = []

    def reset(self) -> np.ndarray:
        self.obs[:] = self.pool.reset()[0]
        self.episode_return[:] = 0.0
        self.episode_length[:] = 0
        return self.obs

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        spaces = self.spaces
        if not spaces.discrete:
            actions = np.minimum(np.maximum(actions, spaces.action_low), spaces.action_high)  # np.clip, leaner
        obs, rewards, terminated, truncated, _ = self.pool.step(actions)
        self.obs[:] = obs
        rewards = rewards.astype(np.float64)
        terminated = terminated.astype(bool)
        truncated = truncated.astype(bool) & ~terminated
        self.episode_return += rewards
        self.episode_length += 1
        done = np.flatnonzero(terminated | truncated)
        if done.size:
            self.final_obs[done] = obs[done]
            self.finished.extend(zip(self.episode_return[done].tolist(), self.episode_length[done].tolist()))
            self.episode_return[done] = 0.0
            self.episode_length[done] = 0
            self.obs[done] = self.pool.step(self._idle[: done.size], done.astype(np.int32))[0]
        return self.obs, rewards, terminated, truncated, self.final_obs

    def state_dict(self) -> dict[str, Any]:
        return {"backend": "envpool"}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Start new episodes: envpool's simulator state cannot be saved or replayed."""
        self.reset()
        self.exact = False

    def close(self) -> None:
        self.pool.close()
