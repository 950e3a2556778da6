"""``train(config, run_dir) -> TrainResult``: PPO's loop, read top to bottom.

::

    run = _start(config, run_dir, resume)        # build everything, or restore it from the checkpoint
    for each iteration:
        _collect(run)                            # num_steps x num_envs transitions into the storage
        stats = _update(run)                     # GAE, then the PPO update (ppo_cli.update)
        _log(run, stats)                         # one progress.csv row, finished episodes, checkpoint

Decisions, stated once (the README repeats them):

* Rollout: ``num_steps`` x ``num_envs`` transitions into preallocated storage. Actions come from a
  numpy copy of the policy (:class:`~ppo_cli.agent.RolloutPolicy`); the Gaussian noise of the whole
  rollout is drawn in one call at its start. Observations are normalised (statistics updated) as
  they arrive; rewards are scaled by the reward filter; both only during training.
* GAE: see :mod:`ppo_cli.rollout` (terminations bootstrap with 0, truncations with V(final obs)).
* Update: see :mod:`ppo_cli.update` (epochs, minibatches, KL early stop); global grad-norm clip
  and Adam (eps 1e-5) in :mod:`ppo_cli.optim`; learning rate annealed linearly from ``lr`` to 0
  over the run (``--anneal-lr``).
* Checkpoints hold the state at the end of an iteration; on Ctrl-C the state of the last finished
  iteration is written. A non-finite loss or parameter stops the run, keeping the last good state.
"""

from __future__ import annotations

import copy
import functools
import logging
import math
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from ppo_cli.agent import ActorCritic, RolloutPolicy
from ppo_cli.checkpoint import load_checkpoint, package_versions, save_checkpoint, to_numpy, to_tensors
from ppo_cli.config import Config
from ppo_cli.diagnostics import EPISODE_COLUMNS, PROGRESS_COLUMNS, CsvLog
from ppo_cli.envs import EnvBatch, EnvPoolBatch, EnvSpaces, make_env_batch
from ppo_cli.optim import make_optimizer, set_learning_rate
from ppo_cli.rollout import RolloutStorage, explained_variance
from ppo_cli.update import LossFn, UpdateStats, flat_f32, make_loss_fn, ppo_update, recompute_advantages
from ppo_cli.wrappers import ObservationNormalizer, RewardNormalizer

log = logging.getLogger(__name__)

FINAL_RETURN_EPISODES = 10  # "final return" = mean raw return of the last this-many episodes


class TrainingDiverged(RuntimeError):
    """A loss, gradient or parameter became NaN or infinite."""


@dataclass
class TrainResult:
    """How one seed's run ended."""

    seed: int
    run_dir: str
    status: str  # "finished" | "interrupted" | "failed"
    global_step: int = 0
    iterations: int = 0
    final_return: float | None = None
    wall_time_s: float = 0.0
    message: str = ""
    checkpoint: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "finished"


@dataclass
class _Seeds:
    """Independent random streams derived from one seed (numpy ``SeedSequence``)."""

    rng: np.random.Generator
    torch_seed: int
    env_seeds: list[int] = field(default_factory=list)

    @classmethod
    def from_seed(cls, seed: int, num_envs: int) -> _Seeds:
        root = np.random.SeedSequence(seed)
        sampling, weights, envs = root.spawn(3)
        env_seeds = [int(s) for s in envs.generate_state(num_envs, dtype=np.uint32)]
        return cls(np.random.Generator(np.random.PCG64(sampling)),
                   int(weights.generate_state(1, dtype=np.uint32)[0]), env_seeds)


class _DeferredInterrupt:
    """Turn the first Ctrl-C into a flag checked at safe points; a second one interrupts at once.

    So an iteration's results (CSV row, in-memory snapshot, checkpoint) are never half-committed.
    Only installs in the main thread (signal handlers cannot be set elsewhere).
    """

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> _DeferredInterrupt:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)

    def check(self) -> None:
        if self.requested:
            raise KeyboardInterrupt


@dataclass
class _Run:
    """Everything one seed's loop carries from one iteration to the next."""

    config: Config
    run_dir: Path
    envs: EnvBatch | EnvPoolBatch
    spaces: EnvSpaces
    agent: ActorCritic
    optimizer: torch.optim.Optimizer
    loss_fn: LossFn
    policy: RolloutPolicy
    obs_filter: ObservationNormalizer
    reward_filter: RewardNormalizer
    storage: RolloutStorage
    rng: np.random.Generator
    progress_log: CsvLog
    episode_log: CsvLog
    versions: dict[str, str]
    obs: np.ndarray  # the current normalised observations (num_envs, obs_dim)
    global_step: int = 0
    iteration: int = 0  # the last finished iteration
    recent_returns: list[float] = field(default_factory=list)
    elapsed_before: float = 0.0  # seconds trained by earlier processes (resume)
    explained_variance: float = math.nan  # of the last rollout, before its update
    started: float = field(default_factory=time.perf_counter)

    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / "checkpoint.pt"

    def elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.started

    def snapshot(self) -> dict[str, Any]:
        """The checkpoint's contents now (a deep copy, so later iterations cannot change it)."""
        spaces = self.spaces
        return copy.deepcopy({
            "config": self.config.to_dict(), "env_id": self.config.env_id, "global_step": self.global_step,
            "iteration": self.iteration, "versions": self.versions,
            "spaces": {"obs_dim": spaces.obs_dim, "act_dim": spaces.act_dim, "discrete": spaces.discrete},
            "model": self.agent.state_dict(), "optimizer": self.optimizer.state_dict(),
            "obs_rms": to_tensors(self.obs_filter.state_dict()),
            "reward_rms": to_tensors(self.reward_filter.state_dict()),
            "rng": self.rng.bit_generator.state, "envs": to_tensors(self.envs.state_dict()),
            "recent_returns": list(self.recent_returns), "elapsed_s": self.elapsed(),
        })


def train(config: Config, run_dir: Path, on_iteration: Callable[[dict[str, Any]], None] | None = None,
          resume: bool = False) -> TrainResult:
    """Train one seed with one thread for torch and numpy's BLAS (see :func:`_train`).

    The matrices are small: a second BLAS thread only adds hand-offs, and when another process
    (another seed) holds the other core those hand-offs cost far more than the products.
    """
    torch.set_num_threads(1)
    with threadpool_limits(limits=1, user_api="blas"):
        return _train(config, run_dir, on_iteration, resume)


def _train(config: Config, run_dir: Path, on_iteration: Callable[[dict[str, Any]], None] | None = None,
           resume: bool = False) -> TrainResult:
    """Train one seed; write ``config.json``, ``progress.csv``, ``episodes.csv``, ``checkpoint.pt``.

    ``run_dir`` must exist. ``on_iteration`` receives every ``progress.csv`` row as a dict (plus
    ``total_steps``, ``update_time_s`` and ``final_return``). Ctrl-C ends the run early with status
    ``interrupted``.

    With ``resume``, training continues from ``run_dir/checkpoint.pt``: weights, optimizer state,
    both filters, the random generator, the environments (mid-episode, by replay), the step counter
    and the learning-rate schedule position are restored, and CSV rows written after the checkpoint
    are dropped and written again. ``config`` must be the saved one, except that ``total_steps``
    may be larger (extending the run; the annealed learning rate then follows the new length).
    """
    run = _start(config, Path(run_dir), resume)
    result = TrainResult(config.seed, str(run.run_dir), "finished", checkpoint=str(run.checkpoint_path))
    if resume and not run.envs.exact:
        result.message = ("the environments could not be replayed exactly; resumed from new episodes"
                          if config.backend == "envpool" else
                          "the environment did not replay exactly; resumed from the replayed state")
    last_good = run.snapshot()
    saved_iteration = run.iteration if resume else -1
    with _DeferredInterrupt() as interrupt:
        try:
            for iteration in range(run.iteration + 1, config.num_iterations + 1):
                iteration_start = time.perf_counter()
                lr = _learning_rate(config, iteration)
                set_learning_rate(run.optimizer, lr)
                _collect(run, interrupt.check)
                interrupt.check()
                stats, update_time = _update(run, iteration)
                row = _log(run, iteration, stats, lr, iteration_start)
                last_good = run.snapshot()
                if iteration % config.checkpoint_interval == 0 or iteration == config.num_iterations:
                    save_checkpoint(run.checkpoint_path, last_good)
                    saved_iteration = iteration
                if on_iteration is not None:
                    on_iteration({**row, "total_steps": config.num_iterations * config.batch_size,
                                  "update_time_s": update_time, "final_return": _mean(run.recent_returns)})
        except KeyboardInterrupt:
            result.status = "interrupted"
            result.message = f"interrupted; saved the state after iteration {last_good['iteration']}"
        except TrainingDiverged as exc:
            result.status = "failed"
            result.message = f"{exc}; kept the state after iteration {last_good['iteration']}"
        finally:
            if last_good["iteration"] != saved_iteration:
                save_checkpoint(run.checkpoint_path, last_good)
            run.progress_log.close()
            run.episode_log.close()
            run.envs.close()
    result.global_step = last_good["global_step"]
    result.iterations = last_good["iteration"]
    result.final_return = _mean(last_good["recent_returns"])
    result.wall_time_s = time.perf_counter() - run.started
    return result


def _start(config: Config, run_dir: Path, resume: bool) -> _Run:
    """Build the environments, networks, filters and logs of a seed; with ``resume``, restore them
    from ``run_dir/checkpoint.pt`` (which must hold the same config, ``total_steps`` aside)."""
    started = time.perf_counter()
    checkpoint_path = run_dir / "checkpoint.pt"
    state = load_checkpoint(checkpoint_path) if resume else None
    for stale in run_dir.glob(".*.tmp"):  # atomic writes cut short by a hard kill (ppo_cli.files)
        stale.unlink()
    if state is not None and Config.from_dict(state["config"]).replace(total_steps=config.total_steps) != config:
        raise ValueError(f"{checkpoint_path} was trained with another config; only total_steps may change")

    seeds = _Seeds.from_seed(config.seed, config.num_envs)
    envs = make_env_batch(config.env_id, config.num_envs, seeds.env_seeds, config.backend)
    spaces = envs.spaces
    agent = ActorCritic(spaces.obs_dim, spaces.act_dim, config.hidden_sizes, spaces.discrete, seeds.torch_seed,
                        config.init_log_std)
    optimizer = make_optimizer(agent, config)
    obs_filter = ObservationNormalizer((spaces.obs_dim,), config.obs_clip, enabled=config.norm_obs)
    reward_filter = RewardNormalizer(config.num_envs, config.gamma, config.reward_clip, enabled=config.norm_reward)
    action_shape = () if spaces.discrete else (spaces.act_dim,)
    storage = RolloutStorage(config.num_steps, config.num_envs, spaces.obs_dim, action_shape)
    (run_dir / "config.json").write_text(config.to_json(), encoding="utf-8")
    keep = None if state is None else int(state["global_step"])
    progress_log = CsvLog(run_dir / "progress.csv", PROGRESS_COLUMNS, keep_until_step=keep)
    episode_log = CsvLog(run_dir / "episodes.csv", EPISODE_COLUMNS, keep_until_step=keep)
    if state is None:
        obs = obs_filter(envs.reset())
    else:
        agent.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        obs_filter.load_state_dict(to_numpy(state["obs_rms"]))
        reward_filter.load_state_dict(to_numpy(state["reward_rms"]))
        seeds.rng.bit_generator.state = state["rng"]
        envs.load_state_dict(to_numpy(state["envs"]))
        obs = obs_filter.normalize(envs.obs)  # the statistics already include these observations
    run = _Run(config, run_dir, envs, spaces, agent, optimizer, make_loss_fn(agent, config, optimizer),
               RolloutPolicy(agent), obs_filter, reward_filter, storage, seeds.rng, progress_log, episode_log,
               package_versions(), obs, started=started)
    if state is not None:
        run.global_step, run.iteration = int(state["global_step"]), int(state["iteration"])
        run.recent_returns, run.elapsed_before = list(state["recent_returns"]), float(state["elapsed_s"])
    return run


def _learning_rate(config: Config, iteration: int) -> float:
    """``lr``, annealed linearly to 0 over the run with ``--anneal-lr`` (iterations count from 1)."""
    return config.lr * (1.0 - (iteration - 1) / config.num_iterations) if config.anneal_lr else config.lr


def _collect(run: _Run, check_stop: Callable[[], None]) -> None:
    """Fill the storage with ``num_steps`` steps of every environment; ``check_stop`` before each."""
    config, storage, policy, envs = run.config, run.storage, run.policy, run.envs
    obs_filter, reward_filter = run.obs_filter, run.reward_filter
    num_steps, num_envs = config.num_steps, config.num_envs
    if run.spaces.discrete:
        noise = run.rng.random((num_steps, num_envs, 1), dtype=np.float32)
    else:
        noise = run.rng.standard_normal((num_steps, num_envs, run.spaces.act_dim), dtype=np.float32)
    obs = run.obs
    for t in range(num_steps):
        check_stop()
        storage.obs[t] = obs
        actions, logprobs, values = policy.act(obs, noise[t])
        storage.actions[t] = actions
        storage.logprobs[t] = logprobs
        storage.values[t] = values
        next_obs, rewards, terminated, truncated, final_obs = envs.step(actions)
        dones = terminated | truncated
        if truncated.any():
            final = obs_filter.normalize(final_obs[truncated])
            storage.final_obs[t, truncated] = final
            storage.bootstrap_values[t, truncated] = policy.value(final)
        storage.rewards[t] = reward_filter(rewards, dones)
        storage.terminated[t] = terminated
        storage.truncated[t] = truncated
        obs = obs_filter(next_obs)
    run.obs = obs
    run.global_step += num_steps * num_envs


def _update(run: _Run, iteration: int) -> tuple[UpdateStats, float]:
    """GAE over the rollout, then the PPO update; returns its statistics and its duration (s)."""
    config, storage = run.config, run.storage
    advantages, returns = storage.gae(run.policy.value(run.obs), config.gamma, config.gae_lambda)
    start = time.perf_counter()
    flat = config.batch_size
    action_shape = storage.actions.shape[2:]
    batch = {
        "obs": torch.from_numpy(storage.obs.reshape(flat, -1)),
        "actions": torch.from_numpy(storage.actions.reshape((flat,) + action_shape)),
        "logprobs": torch.from_numpy(storage.logprobs.reshape(flat)),
        "values": torch.from_numpy(storage.values.reshape(flat)),
        "advantages": flat_f32(advantages),
        "returns": flat_f32(returns),
    }
    run.explained_variance = explained_variance(storage.values.ravel(), returns.ravel())
    recompute = functools.partial(recompute_advantages, run.agent, storage, run.obs, config)
    stats = ppo_update(run.agent, run.optimizer, batch, config, run.rng, run.loss_fn,
                       recompute if config.recompute_adv else None)
    _check_finite(run.agent, stats, iteration)
    run.policy.sync(run.agent)
    return stats, time.perf_counter() - start


def _log(run: _Run, iteration: int, stats: UpdateStats, lr: float, iteration_start: float) -> dict[str, Any]:
    """Write the finished episodes and the iteration's ``progress.csv`` row; returns the row."""
    finished, run.envs.finished = run.envs.finished, []
    if finished:
        run.episode_log.write_many([(run.global_step, ret, length) for ret, length in finished])
        run.recent_returns = (run.recent_returns + [ret for ret, _ in finished])[-FINAL_RETURN_EPISODES:]
    now = time.perf_counter()
    batch = run.config.batch_size
    row = {
        "global_step": run.global_step, "iteration": iteration,
        "time_s": round(run.elapsed(), 3), "sps": int(batch / (now - iteration_start)),
        "episodic_return": float(np.mean([r for r, _ in finished])) if finished else None,
        "episodic_length": float(np.mean([n for _, n in finished])) if finished else None,
        "episodes": len(finished),
        "policy_loss": stats.policy_loss, "value_loss": stats.value_loss, "entropy": stats.entropy,
        "action_std": stats.action_std, "approx_kl": stats.approx_kl, "clipfrac": stats.clipfrac,
        "explained_variance": run.explained_variance, "learning_rate": lr, "update_fraction": stats.update_fraction,
    }
    run.progress_log.write(row)
    run.iteration = iteration
    return row


def _check_finite(agent: ActorCritic, stats: UpdateStats, iteration: int) -> None:
    for name in ("policy_loss", "value_loss", "entropy", "approx_kl"):
        value = getattr(stats, name)
        if not math.isfinite(value):
            raise TrainingDiverged(f"{name} became {value} in iteration {iteration}")
    for name, p in agent.named_parameters():
        if not bool(torch.isfinite(p).all()):
            raise TrainingDiverged(f"parameter {name} became non-finite in iteration {iteration}")


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None
