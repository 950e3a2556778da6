"""Evaluate a checkpoint: rebuild its environment and policy, apply its observation statistics.

The observation filter is restored from the checkpoint and frozen (``training = False``); there is
no reward filter: returns are the environment's raw returns. The environment is built exactly as
``gymnasium.make`` (or the user's factory) gives it, with its own time limit. Reads checkpoints
only; never imports the trainer.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ppo_cli import dmc
from ppo_cli.agent import ActorCritic, RolloutPolicy
from ppo_cli.checkpoint import CheckpointError, check_contents, read_checkpoint, to_numpy
from ppo_cli.config import Config, ConfigError
from ppo_cli.envs import EnvError, check_spaces, make_env, require_trusted, resolve_env_id
from ppo_cli.errors import UserError
from ppo_cli.files import atomic_write_text, check_writable
from ppo_cli.layout import LayoutError, checkpoint_files, evaluation_outputs
from ppo_cli.render import RenderError, VideoWriter, check_video_path
from ppo_cli.wrappers import ObservationNormalizer

@dataclass
class EvalResult:
    checkpoint: str
    env_id: str
    global_step: int
    seed: int
    deterministic: bool
    returns: list[float]
    lengths: list[int]
    video: str | None = None

    @property
    def mean(self) -> float:
        return float(np.mean(self.returns))

    @property
    def std(self) -> float:
        return float(np.std(self.returns))

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "episodes": len(self.returns), "mean": self.mean, "std": self.std}


@dataclass
class LoadedAgent:
    """What evaluation needs from a checkpoint."""

    config: Config
    policy: RolloutPolicy
    obs_filter: ObservationNormalizer
    global_step: int
    spaces: dict[str, Any]


@dataclass
class EvalJob:
    """One checkpoint to evaluate: its path, its checked contents, the environment to play it on."""

    checkpoint: Path
    state: dict[str, Any]
    env_id: str


def plan_eval(path: Path, env_name: str | None = None, trust_env: bool = False,
              video: Path | None = None, best: bool = False) -> list[EvalJob]:
    """The checkpoints of ``path`` (a file, a seed folder or a run folder), read and checked, each with
    the environment to evaluate it on: ``env_name`` (typed by the user, so theirs to run), else the
    checkpoint's, which must be a registered id unless ``trust_env``. Refuses, before any episode,
    what could not be written: ``eval.json`` (``best_eval.json``) beside each checkpoint, the ``video``."""
    try:
        paths = checkpoint_files(path, best)
        states = [read_checkpoint(p) for p in paths]
    except (CheckpointError, LayoutError) as exc:
        raise UserError(str(exc), "CHECKPOINT") from None
    if env_name is not None:
        try:
            env_ids = [resolve_env_id(env_name)] * len(paths)
        except EnvError as exc:
            raise UserError(str(exc), "--env") from None
    else:
        env_ids = [state["config"]["env_id"] for state in states]
        for p, env_id in zip(paths, env_ids):
            try:
                require_trusted(env_id, str(p), trust_env, env_option=True)
            except EnvError as exc:
                raise UserError(str(exc), "CHECKPOINT") from None
    _check_outputs(paths, video)
    return [EvalJob(p, state, env_id) for p, state, env_id in zip(paths, states, env_ids)]


def _check_outputs(paths: list[Path], video: Path | None) -> None:
    if video is not None:
        if len(paths) > 1:
            raise UserError(f"--video needs one checkpoint, the folder holds {len(paths)}; pass a seed folder, "
                            f"or use --render to write one video per seed")
        try:
            check_video_path(video)
        except RenderError as exc:
            raise UserError(str(exc), "--video") from None
    for folder in dict.fromkeys([p.parent for p in paths] + ([video.parent] if video is not None else [])):
        try:
            check_writable(folder)
        except OSError as exc:
            at_fault = "--video" if video is not None and folder == video.parent else "CHECKPOINT"
            raise UserError(f"cannot write the evaluation's files to {folder}: {exc.strerror or exc}",
                            at_fault) from None


def check_envs(jobs: list[EvalJob], loaded: list[LoadedAgent], render_mode: str | None) -> None:
    """Build each environment once: it must exist here and fit every policy evaluated on it."""
    for env_id in dict.fromkeys(job.env_id for job in jobs):
        try:
            env = make_env(env_id, render_mode=render_mode)
        except EnvError as exc:
            raise UserError(f"the checkpoint's environment cannot be built here: {exc}", "CHECKPOINT") from None
        try:
            for agent in (a for a, job in zip(loaded, jobs) if job.env_id == env_id):
                check_env_fits(agent, env, env_id)
        except EnvError as exc:
            raise UserError(str(exc), "CHECKPOINT") from None
        finally:
            env.close()


def load_agent(path: Path, state: dict[str, Any] | None = None) -> LoadedAgent:
    """Load a checkpoint (weights only, contents checked before anything is built) into a frozen
    observation filter and a rollout policy. ``state``: the checkpoint already read."""
    state = read_checkpoint(path) if state is None else state
    config = check_contents(state, Path(path))
    spaces = state["spaces"]
    try:
        agent = ActorCritic(spaces["obs_dim"], spaces["act_dim"], config.hidden_sizes, spaces["discrete"],
                            activation=config.activation)
        agent.load_state_dict(state["model"])
        obs_filter = ObservationNormalizer((spaces["obs_dim"],), config.obs_clip, enabled=config.norm_obs,
                                           training=False)
        obs_filter.load_state_dict(to_numpy(state["obs_rms"]))
    except (KeyError, TypeError, ValueError, RuntimeError, ConfigError) as exc:
        raise CheckpointError(f"{path} is a damaged ppo checkpoint ({type(exc).__name__}: {exc})") from None
    return LoadedAgent(config, RolloutPolicy(agent), obs_filter, int(state["global_step"]), dict(spaces))


def check_env_fits(loaded: LoadedAgent, env: Any, env_id: str) -> None:
    """Raise :class:`~ppo_cli.envs.EnvError` unless ``env``'s spaces are those the policy was trained on."""
    have = check_spaces(env, env_id)
    want = loaded.spaces
    if (have.obs_dim, have.act_dim, have.discrete) != (want["obs_dim"], want["act_dim"], want["discrete"]):
        kind = lambda discrete: "discrete" if discrete else "continuous"  # noqa: E731
        raise EnvError(f"{env_id} has {have.obs_dim} observations and {have.act_dim} {kind(have.discrete)} "
                       f"actions; the policy was trained on {want['obs_dim']} and {want['act_dim']} "
                       f"{kind(want['discrete'])}")


def run_episodes(env: Any, policy: RolloutPolicy, obs_filter: ObservationNormalizer, episodes: int, seed: int,
                 deterministic: bool = True, video: VideoWriter | None = None,
                 check_stop: Any = None) -> tuple[list[float], list[int]]:
    """Play ``episodes`` episodes; returns raw returns and lengths. The first reset is seeded with ``seed``.

    Frames go to ``video`` from the first step until it is full (by default, the first episode).
    ``check_stop`` (training's stop request) is called before every episode. ``ppo eval`` and the
    evaluations during training (:mod:`ppo_cli.monitor`) both play their episodes here.
    """
    rng = np.random.default_rng(seed)
    spaces = check_spaces(env, str(env.spec.id if env.spec else env))
    returns, lengths = [], []
    recording = video is not None
    for episode in range(episodes):
        if check_stop is not None:
            check_stop()
        obs, _ = env.reset(seed=seed if episode == 0 else None)
        if recording:
            video.add(env.render())
        total, length, done = 0.0, 0, False
        while not done:
            x = obs_filter(np.asarray(obs, dtype=np.float64)[None])
            if deterministic:
                action = policy.mode(x)[0]
            else:
                noise = rng.random((1, 1), dtype=np.float32) if spaces.discrete else \
                    rng.standard_normal((1, spaces.act_dim), dtype=np.float32)
                action = policy.act(x, noise)[0][0]
            if not spaces.discrete:
                action = np.clip(action, spaces.action_low, spaces.action_high)
            obs, reward, terminated, truncated, _ = env.step(action)
            total += float(reward)
            length += 1
            done = terminated or truncated
            if recording:
                video.add(env.render())
                recording = not video.full
        returns.append(total)
        lengths.append(length)
        if video is not None and video.max_frames is None:
            recording = False  # default: the whole first episode
    return returns, lengths


DMC_EPISODES = 50
"""Episodes a DMC checkpoint is evaluated with unless told otherwise (10 elsewhere): DMC's deterministic
episodes are bimodal (reacher-hard reaches its target or scores ~0, walker-walk walks or falls), so
the same first 10 start states are a draw every checkpoint shares (docs/benchmarks.md)."""


def default_episodes(env_id: str) -> int:
    return DMC_EPISODES if dmc.is_dmc(env_id) else 10


def evaluate(checkpoint: Path, loaded: LoadedAgent, episodes: int | None = None, seed: int = 0,
             deterministic: bool = True, render_mode: str | None = None, video: VideoWriter | None = None,
             env_id: str | None = None) -> EvalResult:
    """Evaluate a loaded checkpoint on its environment (or ``env_id``, whose spaces must fit) for
    ``episodes`` (:func:`default_episodes` if None); with ``video`` the frames are written to ``video.path``."""
    env_id = env_id or loaded.config.env_id
    episodes = episodes or default_episodes(env_id)
    env = make_env(env_id, render_mode=render_mode, action_repeat=loaded.config.action_repeat)
    try:
        check_env_fits(loaded, env, env_id)
        if video is not None and video.fps is None:
            video.fps = float(env.metadata.get("render_fps") or 30)
        returns, lengths = run_episodes(env, loaded.policy, loaded.obs_filter, episodes, seed, deterministic, video)
    finally:
        env.close()
    written = str(video.write()) if video is not None else None
    return EvalResult(str(checkpoint), env_id, loaded.global_step, seed, deterministic, returns, lengths, written)


def save_result(result: EvalResult) -> Path:
    """Write the result next to the checkpoint (atomically): ``eval.json``, which ``ppo plot --eval``
    reads, or ``best_eval.json`` for a ``best.pt`` (:func:`~ppo_cli.layout.evaluation_outputs`)."""
    target = evaluation_outputs(Path(result.checkpoint))[0]
    atomic_write_text(target, json.dumps(_json_safe(result.to_dict()), indent=2))
    return target


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value

