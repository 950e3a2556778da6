"""``train(config, run_dir) -> TrainResult``: PPO's loop, read top to bottom.

::

    run = _start(config, run_dir, resume)        # build everything, or restore it from the checkpoint
    for each iteration:
        _collect(run)                            # num_steps x num_envs transitions into the storage
        stats = _update(run)                     # GAE, then the PPO update (ppo_cli.update)
        _log(run, stats)                         # one progress.csv row, finished episodes, checkpoint

Decisions, stated once (docs/algorithm.md repeats them):

* Rollout: ``num_steps`` x ``num_envs`` transitions into preallocated storage. Actions come from a
  numpy copy of the policy (:class:`~ppo_cli.agent.RolloutPolicy`); the Gaussian noise of the whole
  rollout is drawn in one call at its start. Observations are normalised (statistics updated) as
  they arrive; rewards are scaled by the reward filter; both only during training.
* GAE: see :mod:`ppo_cli.rollout` (terminations bootstrap with 0, truncations with V(final obs)).
* Update: see :mod:`ppo_cli.update` (epochs, minibatches, KL early stop); global grad-norm clip
  and Adam (eps 1e-5) in :mod:`ppo_cli.optim`; learning rate annealed linearly from ``lr`` to 0
  over the run (``--anneal-lr``).
* Checkpoints hold the state at the end of an iteration. On a stop request (Ctrl-C, SIGTERM,
  SIGHUP; :mod:`ppo_cli.signals`) the state of the last finished iteration is written. A
  non-finite loss or parameter, a full disk or an environment step past ``--step-timeout`` fails
  the seed, keeping the last good state (and the rows written).
* The seed folder is locked (:class:`~ppo_cli.files.FolderLock`) for the whole run: a second
  process cannot write into it.
"""

from __future__ import annotations

import contextlib
import copy
import errno
import functools
import logging
import math
import multiprocessing
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from ppo_cli.agent import ActorCritic, RolloutPolicy
from ppo_cli.checkpoint import (CheckpointError, package_versions, read_checkpoint, save_checkpoint, to_numpy,
                                to_tensors)
from ppo_cli.config import Config
from ppo_cli.diagnostics import EPISODE_COLUMNS, PROGRESS_COLUMNS, CsvLog
from ppo_cli.envs import EnvBatch, EnvPoolBatch, EnvSpaces, make_env_batch
from ppo_cli.files import FolderBusy, FolderLock, atomic_write_text, remove_stale_temporaries
from ppo_cli.layout import CHECKPOINT_FILE, CONFIG_FILE, EPISODES_FILE, ERROR_FILE, PROGRESS_FILE
from ppo_cli.monitor import Monitor
from ppo_cli.optim import make_optimizer, set_learning_rate
from ppo_cli.rollout import RolloutStorage, explained_variance
from ppo_cli.signals import StepTimeout, StepWatchdog, StopRequest
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
    signal: int | None = None  # the signal that stopped it, when one did
    best_eval: float | None = None  # with --eval-interval: the best and the last evaluation's mean return
    last_eval: float | None = None
    action_repeat: int = 1  # environment frames per step: global_step counts the agent's actions

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
    last_good: dict[str, Any] = field(default_factory=dict)  # snapshot after the last finished iteration
    saved_iteration: int = -1  # the iteration of the checkpoint on disk
    monitor: Monitor | None = None  # evaluations, videos, TensorBoard (ppo_cli.monitor)

    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / CHECKPOINT_FILE

    def save_last_good(self) -> None:
        """Write the last good snapshot as the checkpoint, unless it is already on disk."""
        if self.last_good["iteration"] != self.saved_iteration:
            save_checkpoint(self.checkpoint_path, self.last_good)
            self.saved_iteration = self.last_good["iteration"]

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


class RunExists(FolderBusy):
    """A fresh start asked of a folder that already holds a run: it is left as it is (a plan made
    before another process trained the folder must not overwrite what that process wrote)."""

    def __init__(self, folder: Path) -> None:
        RuntimeError.__init__(self, f"{folder} already holds a run ({CHECKPOINT_FILE}); resume it or train "
                                    f"into another folder")
        self.folder, self.pid = folder, None  # FolderBusy's attributes: no other process holds it


def train(config: Config, run_dir: Path, on_iteration: Callable[[dict[str, Any]], None] | None = None,
          resume: bool = False, stop: StopRequest | None = None) -> TrainResult:
    """Train one seed in ``run_dir`` (see :func:`_train`), holding the folder's lock throughout.

    ``stop`` is the stop request to obey (the launcher's); without one, this call installs its own
    handlers for SIGINT, SIGTERM and SIGHUP while it runs (main thread only). torch and numpy's
    BLAS run one thread: the matrices are small, and a second thread only adds hand-offs (which
    cost far more than the products when another seed holds the other core). Raises
    :class:`~ppo_cli.files.FolderBusy` if another process holds the folder, and :class:`RunExists`
    if, without ``resume``, it already holds a run.
    """
    torch.set_num_threads(1)
    with FolderLock(run_dir), threadpool_limits(limits=1, user_api="blas"):
        if not resume and (Path(run_dir) / CHECKPOINT_FILE).exists():  # checked under the lock: no race
            raise RunExists(Path(run_dir))
        if stop is not None:
            return _train(config, Path(run_dir), on_iteration, resume, stop)
        with StopRequest() as own:
            return _train(config, Path(run_dir), on_iteration, resume, own)


def _train(config: Config, run_dir: Path, on_iteration: Callable[[dict[str, Any]], None] | None,
           resume: bool, stop: StopRequest) -> TrainResult:
    """Train one seed; write ``config.json``, ``progress.csv``, ``episodes.csv``, ``checkpoint.pt``.

    ``run_dir`` must exist. ``on_iteration`` receives every ``progress.csv`` row as a dict (plus
    ``total_steps``, ``update_time_s`` and ``final_return``). A stop request ends the run early
    with status ``interrupted``.

    With ``resume``, training continues from ``run_dir/checkpoint.pt``: weights, optimizer state,
    both filters, the random generator, the environments (mid-episode, by replay), the step counter
    and the learning-rate schedule position are restored, and CSV rows written after the checkpoint
    are dropped and written again. ``config`` must be the saved one, except that ``total_steps``
    may be larger (extending the run; the annealed learning rate then follows the new length).
    """
    run = _start(config, run_dir, resume)
    result = TrainResult(config.seed, str(run.run_dir), "finished", checkpoint=str(run.checkpoint_path),
                         action_repeat=config.action_repeat)
    notes = _resume_notes(run, resume)
    run.last_good = run.snapshot()
    run.saved_iteration = run.iteration if resume else -1
    try:
        with _stepping(run) as step:
            for iteration in range(run.iteration + 1, config.num_iterations + 1):
                iteration_start = time.perf_counter()
                lr = _learning_rate(config, iteration)
                set_learning_rate(run.optimizer, lr)
                _collect(run, stop.check, step)
                stop.check()
                stats, update_time = _update(run, iteration)
                row = _log(run, iteration, stats, lr, iteration_start)
                run.monitor.after_iteration(run, row, iteration, stop.check)  # before the checkpoint: see monitor
                run.last_good = run.snapshot()
                if iteration % config.checkpoint_interval == 0 or iteration == config.num_iterations:
                    run.save_last_good()
                if on_iteration is not None:
                    on_iteration({**row, "total_steps": config.num_iterations * config.batch_size,
                                  "update_time_s": update_time, "final_return": _mean(run.recent_returns)})
    except KeyboardInterrupt:
        result.status, result.signal = "interrupted", stop.signum
        result.message = f"interrupted; saved the state after iteration {run.last_good['iteration']}"
    except TrainingDiverged as exc:
        result.status = "failed"
        result.message = f"{exc}; kept the state after iteration {run.last_good['iteration']}"
    except StepTimeout as exc:
        result.status = "failed"
        result.message = f"{exc} in iteration {run.iteration + 1}; kept the state after iteration {run.iteration}"
    except OSError as exc:
        if not is_write_error(exc):
            raise
        result.status = "failed"
        result.message = (f"could not write {exc.filename or 'a file'}: {exc.strerror or exc}; kept the rows "
                          f"and state after iteration {run.last_good['iteration']}")
    finally:
        _finish(run, result)
    result.message = "; ".join(m for m in (result.message, notes) if m)
    result.global_step = run.last_good["global_step"]
    result.iterations = run.last_good["iteration"]
    result.final_return = _mean(run.last_good["recent_returns"])
    result.wall_time_s = time.perf_counter() - run.started
    if math.isfinite(run.monitor.best):
        result.best_eval, result.last_eval = run.monitor.best, run.monitor.latest
    return result


def is_write_error(exc: OSError) -> bool:
    """Whether ``exc`` is a failure to write a file (a full disk, a read-only or vanished folder), as
    opposed to an ``OSError`` of an environment's own (a socket, a subprocess)."""
    return exc.filename is not None or exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG,
                                                     errno.EIO, errno.EACCES, errno.EPERM, errno.ENOENT)


def _resume_notes(run: _Run, resume: bool) -> str:
    """What the user should know: how the environments are stepped, and of a resume, an inexact replay
    or damaged CSV lines dropped."""
    notes = list(run.envs.notes)
    if resume and not run.envs.exact:
        notes.append("the environments could not be replayed exactly; resumed from new episodes"
                     if run.config.backend == "envpool" else
                     "the environment did not replay exactly; resumed from the replayed state")
    for csv_log in (run.progress_log, run.episode_log):
        if csv_log.dropped:
            lines = ", ".join(map(str, csv_log.dropped[:5])) + (", ..." if len(csv_log.dropped) > 5 else "")
            notes.append(f"dropped {len(csv_log.dropped)} damaged line(s) of {csv_log.path.name} (line {lines})")
    return "; ".join(notes)


def _finish(run: _Run, result: TrainResult) -> None:
    """Save the last good state if it is not on disk yet and close everything; a checkpoint that
    cannot be written (a full disk) is reported in ``result``, never raised. A failed seed's reason
    is written to its ``error.txt`` (``ppo diagnose`` reads it)."""
    if result.status == "failed":
        with contextlib.suppress(OSError):
            atomic_write_text(run.run_dir / ERROR_FILE, result.message + "\n")
    try:
        run.save_last_good()
    except OSError as exc:
        result.status = "failed"
        on_disk = (f"the one on disk is from iteration {run.saved_iteration}, where --resume continues"
                   if run.saved_iteration >= 0 else "there is none yet: --resume starts the seed again")
        result.message += f"; could not save the checkpoint either ({exc.strerror or exc}): {on_disk}"
    for closing in (run.progress_log.close, run.episode_log.close, run.envs.close, run.monitor.close):
        try:
            closing()
        except Exception as exc:  # closing must not hide how the run ended
            log.warning("while closing: %s: %s", type(exc).__name__, exc)


@contextlib.contextmanager
def _stepping(run: _Run) -> Iterator[Callable[..., Any]]:
    """The environment step to call: ``envs.step`` itself, or with ``--step-timeout`` that step under
    a :class:`~ppo_cli.signals.StepWatchdog`."""
    if run.config.step_timeout is None:
        yield run.envs.step
        return

    def stuck(message: str) -> None:  # the step ignored the interruption: save what is good, end the process
        text = f"{message}; kept the state after iteration {run.last_good['iteration']}"
        with contextlib.suppress(OSError):
            run.save_last_good()
            atomic_write_text(run.run_dir / ERROR_FILE, text + "\n")
        if multiprocessing.parent_process() is None:  # a worker's launcher reports it from error.txt
            print(f"Error: seed {run.config.seed}: {text}", file=sys.stderr, flush=True)
        os._exit(1)

    with StepWatchdog(run.config.step_timeout, stuck) as watchdog:
        yield watchdog.wrap(run.envs.step)


def _warn_other_kernels(checkpoint_path: Path, state: dict[str, Any], here: str) -> None:
    """A resume on a CPU whose kernels (``here``) round differently continues correctly but not bit for
    bit as the uninterrupted run would have: say so (a checkpoint from before kernels were recorded: silent)."""
    saved = state.get("versions")
    saved = saved.get("kernels") if isinstance(saved, dict) else None
    if isinstance(saved, str) and saved != here:
        log.warning("warning: resuming %s with other CPU kernels (%s; it was trained with %s): the run continues "
                    "correctly, but not bit for bit as it would have where it started", checkpoint_path, here,
                    saved[:200])


def _start(config: Config, run_dir: Path, resume: bool) -> _Run:
    """Build the environments, networks, filters and logs of a seed; with ``resume``, restore them
    from ``run_dir/checkpoint.pt`` (which must hold the same config, ``total_steps`` aside)."""
    started = time.perf_counter()
    checkpoint_path = run_dir / CHECKPOINT_FILE
    state = read_checkpoint(checkpoint_path, resume=True) if resume else None
    remove_stale_temporaries(run_dir)  # atomic writes cut short by a hard kill
    (run_dir / ERROR_FILE).unlink(missing_ok=True)  # from an earlier attempt: this one starts afresh
    if state is not None and Config.from_dict(state["config"]).replace(total_steps=config.total_steps) != config:
        raise ValueError(f"{checkpoint_path} was trained with another config; only total_steps may change")

    seeds = _Seeds.from_seed(config.seed, config.num_envs)
    envs = make_env_batch(config.env_id, config.num_envs, seeds.env_seeds, config.backend, config.action_repeat,
                          config.stagger_resets)
    spaces = envs.spaces
    agent = ActorCritic(spaces.obs_dim, spaces.act_dim, config.hidden_sizes, spaces.discrete, seeds.torch_seed,
                        config.init_log_std, config.activation)
    optimizer = make_optimizer(agent, config)
    obs_filter = ObservationNormalizer((spaces.obs_dim,), config.obs_clip, enabled=config.norm_obs)
    reward_filter = RewardNormalizer(config.num_envs, config.gamma, config.reward_clip, enabled=config.norm_reward)
    action_shape = () if spaces.discrete else (spaces.act_dim,)
    storage = RolloutStorage(config.num_steps, config.num_envs, spaces.obs_dim, action_shape)
    atomic_write_text(run_dir / CONFIG_FILE, config.to_json())
    keep = None if state is None else int(state["global_step"])
    progress_log = CsvLog(run_dir / PROGRESS_FILE, PROGRESS_COLUMNS, keep_until_step=keep)
    episode_log = CsvLog(run_dir / EPISODES_FILE, EPISODE_COLUMNS, keep_until_step=keep)
    if state is None:
        obs = obs_filter(envs.reset())
    else:
        try:
            agent.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            obs_filter.load_state_dict(to_numpy(state["obs_rms"]))
            reward_filter.load_state_dict(to_numpy(state["reward_rms"]))
            seeds.rng.bit_generator.state = state["rng"]
            envs.load_state_dict(to_numpy(state["envs"]))
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as exc:
            raise CheckpointError(f"{checkpoint_path} cannot be restored: {type(exc).__name__}: {exc}") from None
        obs = obs_filter.normalize(envs.obs)  # the statistics already include these observations
    versions = package_versions()
    if state is not None:
        _warn_other_kernels(checkpoint_path, state, versions["kernels"])
    run = _Run(config, run_dir, envs, spaces, agent, optimizer, make_loss_fn(agent, config, optimizer),
               RolloutPolicy(agent), obs_filter, reward_filter, storage, seeds.rng, progress_log, episode_log,
               versions, obs, started=started)
    run.monitor = Monitor(config, run_dir, keep)
    if state is not None:
        run.global_step, run.iteration = int(state["global_step"]), int(state["iteration"])
        run.recent_returns, run.elapsed_before = list(state["recent_returns"]), float(state["elapsed_s"])
    return run


def _learning_rate(config: Config, iteration: int) -> float:
    """``lr``, annealed linearly to 0 over the run with ``--anneal-lr`` (iterations count from 1)."""
    return config.lr * (1.0 - (iteration - 1) / config.num_iterations) if config.anneal_lr else config.lr


def _collect(run: _Run, check_stop: Callable[[], None], step: Callable[..., Any]) -> None:
    """Fill the storage with ``num_steps`` steps of every environment (``step``: ``envs.step``, or it
    under a watchdog); ``check_stop`` before each."""
    config, storage, policy = run.config, run.storage, run.policy
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
        next_obs, rewards, terminated, truncated, final_obs = step(actions)
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
