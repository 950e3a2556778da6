"""``train(config, run_dir) -> TrainResult``: PPO's loop, collect -> GAE -> update -> log.

Decisions, stated once (the README repeats them):

* Rollout: ``num_steps`` x ``num_envs`` transitions into preallocated storage. Actions come from a
  numpy copy of the policy (:class:`~ppo_cli.agent.RolloutPolicy`); the Gaussian noise of the whole
  rollout is drawn in one call at its start. Observations are normalised (statistics updated) as
  they arrive; rewards are scaled by the reward filter; both only during training.
* GAE: see :mod:`ppo_cli.rollout` (terminations bootstrap with 0, truncations with V(final obs)).
* Update: ``update_epochs`` passes over the batch in ``num_minibatches`` shuffled minibatches;
  advantages recomputed with the current critic before each epoch after the first
  (``--recompute-adv``); advantages normalised per minibatch (``--norm-adv``); clipped
  (optionally dual-clip) surrogate; value loss clipped around the old value (``--clip-vloss``);
  entropy bonus; global grad-norm clip; Adam (eps 1e-5),
  learning rate annealed linearly from ``lr`` to 0 over the run (``--anneal-lr``).
* KL early stop: before each minibatch's gradient step the KL estimate ``mean((r-1) - log r)`` of
  the current policy against the rollout policy is computed on that minibatch; if it exceeds
  ``target_kl`` that step and all remaining steps of the iteration are skipped.
  ``update_fraction`` in ``progress.csv`` is the share of planned steps that ran.
  Diagnostics average over every minibatch evaluated, including the one that stopped the update.
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
from torch import nn

from ppo_cli import fused, losses
from ppo_cli.agent import ActorCritic, RolloutPolicy
from ppo_cli.checkpoint import load_checkpoint, package_versions, save_checkpoint, to_numpy, to_tensors
from ppo_cli.config import Config
from ppo_cli.diagnostics import EPISODE_COLUMNS, PROGRESS_COLUMNS, CsvLog
from ppo_cli.envs import make_env_batch
from ppo_cli.rollout import RolloutStorage
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
class UpdateStats:
    """Averages over the minibatches evaluated in one iteration's update."""

    policy_loss: float
    value_loss: float
    entropy: float
    approx_kl: float
    clipfrac: float
    update_fraction: float
    action_std: float | None


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


def explained_variance(values: np.ndarray, returns: np.ndarray) -> float:
    """``1 - Var(returns - values) / Var(returns)``; NaN when the returns have no variance."""
    var = float(np.var(returns))
    return math.nan if var == 0.0 else 1.0 - float(np.var(returns - values)) / var


class FlatAdam(torch.optim.Adam):
    """Adam over one flat tensor holding every parameter of a module, each parameter a view into it.

    The gradients are views into one flat gradient tensor too (autograd accumulates into an
    existing ``.grad`` in place), so zeroing is one ``fill``, the global-norm clip a dot product
    and a scaling, and a step one call of Adam's fused kernel over one tensor. :meth:`lean_step`
    calls that kernel (``torch._fused_adam_``) directly, as ``step()`` of
    ``torch.optim.Adam(fused=True)`` does after ~60 us of per-call bookkeeping (hooks, profiler
    records, grouping tensors by device) that one CPU tensor does not need: the same arithmetic,
    the same result bit for bit (tested).
    It is a ``torch.optim.Adam``: its state dict has one parameter whose moments are the module's,
    flattened in ``parameters()`` order; :meth:`load_state_dict` also accepts the per-parameter
    state of a plain Adam.
    """

    def __init__(self, module: nn.Module, lr: float, eps: float) -> None:
        params = list(module.parameters())
        self.sizes = [p.numel() for p in params]
        flat, grad = torch.zeros(sum(self.sizes)), torch.zeros(sum(self.sizes))
        offset = 0
        for p, n in zip(params, self.sizes):
            flat[offset:offset + n].copy_(p.detach().reshape(-1))
            p.data = flat[offset:offset + n].view_as(p)
            p.grad = grad[offset:offset + n].view_as(p)
            offset += n
        self.flat = nn.Parameter(flat)
        self.flat.grad = grad
        self.grad_array = grad.numpy()  # the same memory
        try:
            super().__init__([self.flat], lr=lr, eps=eps, fused=True)
            self.lean = hasattr(torch, "_fused_adam_")
        except (RuntimeError, TypeError):  # torch builds without the fused CPU kernel
            super().__init__([self.flat], lr=lr, eps=eps)
            self.lean = False

    def lean_step(self) -> None:
        """``step()``: ``torch._fused_adam_`` on the flat tensor (``step()`` itself for the first
        step, which creates the state, and where the kernel is missing)."""
        state = self.state.get(self.flat)
        if not self.lean or not state:
            self.step()
            return
        group = self.param_groups[0]
        beta1, beta2 = group["betas"]
        step = state["step"]
        step.add_(1)
        torch._fused_adam_([self.flat], [self.flat.grad], [state["exp_avg"]], [state["exp_avg_sq"]], [], [step],
                           amsgrad=group["amsgrad"], lr=group["lr"], beta1=beta1, beta2=beta2,
                           weight_decay=group["weight_decay"], eps=group["eps"], maximize=group["maximize"],
                           grad_scale=None, found_inf=None)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Zero the flat gradient in place (never ``None``: the parameters' grads are views into it)."""
        self.grad_array.fill(0.0)

    def clip_grad_norm_(self, max_norm: float) -> None:
        """``nn.utils.clip_grad_norm_`` on the flat gradient: scale by ``min(1, max_norm / (norm + 1e-6))``."""
        grad = self.grad_array
        coef = max_norm / (math.sqrt(float(np.dot(grad, grad))) + 1e-6)
        if coef < 1.0:
            grad *= np.float32(coef)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        ids = state_dict["param_groups"][0]["params"]
        if len(ids) > 1:  # a plain Adam's per-parameter state: flatten its moments in the same order
            per_param = [state_dict["state"][i] for i in ids]
            state_dict = {"param_groups": [{**state_dict["param_groups"][0], "params": [0]}], "state": {0: {
                "step": torch.tensor(float(per_param[0]["step"])),
                "exp_avg": torch.cat([s["exp_avg"].reshape(-1) for s in per_param]),
                "exp_avg_sq": torch.cat([s["exp_avg_sq"].reshape(-1) for s in per_param]),
            }}}
        super().load_state_dict(state_dict)


def make_optimizer(agent: ActorCritic, config: Config) -> torch.optim.Optimizer:
    """:class:`FlatAdam` with eps 1e-5 (the learning rate is set per iteration)."""
    return FlatAdam(agent, lr=config.lr, eps=1e-5)


LossFn = Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


def minibatch_loss(agent: ActorCritic, config: Config, obs: torch.Tensor, actions: torch.Tensor,
                   old_logprobs: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor,
                   advantages: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PPO's loss on one minibatch (advantages already normalised), all inputs ``(minibatch, ...)``.

    Returns ``(loss, [policy_loss, value_loss, entropy], logratio)``, the last two detached.
    """
    logprob, entropy, value = agent.evaluate(obs, actions)
    logratio = logprob - old_logprobs
    ratio = torch.exp(logratio)
    pg_loss = losses.clipped_surrogate(ratio, advantages, config.clip_coef, config.dual_clip)
    v_loss = losses.value_loss(value, old_values, returns, config.clip_coef if config.clip_vloss else None)
    ent = entropy.mean()
    loss = pg_loss - config.ent_coef * ent + config.vf_coef * v_loss
    return loss, torch.stack((pg_loss, v_loss, ent)).detach(), logratio.detach()


def make_loss_fn(agent: ActorCritic, config: Config, optimizer: torch.optim.Optimizer | None = None) -> LossFn:
    """The minibatch loss bound to ``agent`` and ``config``.

    Gaussian policies use :class:`~ppo_cli.fused.FusedLoss` (the same value and gradient as
    :func:`minibatch_loss`, computed in one autograd node; its input is the optimizer's flat
    tensor where ``optimizer`` is a :class:`FlatAdam`), categorical ones :func:`minibatch_loss`.
    With ``config.compile`` it is :func:`minibatch_loss` compiled with ``torch.compile`` (which
    fuses the same operations itself). Compiling happens at the first call; if it fails (no C
    compiler, an unsupported platform) the eager function is used from then on and a warning is
    logged.
    """
    if not config.compile:
        if agent.discrete:
            return functools.partial(minibatch_loss, agent, config)
        coefs = fused.LossCoefs(config.clip_coef, config.dual_clip, config.clip_vloss, config.ent_coef,
                                config.vf_coef)
        return fused.FusedLoss(agent, coefs, optimizer.flat if isinstance(optimizer, FlatAdam) else None)
    eager = functools.partial(minibatch_loss, agent, config)
    compiled = torch.compile(eager, dynamic=False)
    current: list[LossFn] = [compiled]

    def loss_fn(*tensors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        try:
            return current[0](*tensors)
        except Exception as exc:  # inductor reports failures with many exception types
            if current[0] is eager:
                raise
            log.warning("torch.compile failed (%s: %s); training eagerly", type(exc).__name__, exc)
            current[0] = eager
            return eager(*tensors)

    return loss_fn


def _flat_f32(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(array.reshape(-1).astype(np.float32))


@torch.no_grad()
def recompute_advantages(agent: ActorCritic, storage: RolloutStorage, last_obs: np.ndarray,
                         config: Config) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE ``(advantages, returns)``, flattened, with values from the critic as it is now.

    Every stored observation, the truncated episodes' final observations and the observation after
    the rollout are evaluated in one batch; the rollout's rewards and episode ends are reused.
    """
    num_steps, num_envs = storage.values.shape
    n = num_steps * num_envs
    truncated = storage.truncated
    obs = np.concatenate([storage.obs.reshape(n, -1), last_obs, storage.final_obs[truncated]])
    values = agent.value(torch.from_numpy(obs)).numpy()
    current = values[:n].reshape(num_steps, num_envs)
    bootstrap = np.zeros_like(current)
    bootstrap[truncated] = values[n + num_envs:]
    advantages, returns = storage.gae(values[n:n + num_envs], config.gamma, config.gae_lambda, current, bootstrap)
    return _flat_f32(advantages), _flat_f32(returns)


def ppo_update(agent: ActorCritic, optimizer: torch.optim.Optimizer, batch: dict[str, torch.Tensor],
               config: Config, rng: np.random.Generator, loss_fn: LossFn | None = None,
               recompute: Callable[[], tuple[torch.Tensor, torch.Tensor]] | None = None) -> UpdateStats:
    """Run PPO's update passes over one rollout batch (tensors flattened to ``(batch_size, ...)``).

    Per epoch the batch is shuffled with one gather and cut into ``num_minibatches`` slices; with
    ``config.norm_adv`` the advantages of every minibatch are normalised (per minibatch) in one
    operation. ``recompute``, if given, returns fresh ``(advantages, returns)`` and is called
    before every epoch after the first (``--recompute-adv``). Diagnostics stay tensors until the
    end of the update and are reduced once. ``loss_fn`` defaults to :func:`make_loss_fn`'s
    eager choice.
    """
    loss_fn = loss_fn or make_loss_fn(agent, config.replace(compile=False), optimizer)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    n_mb, mb_size = config.num_minibatches, config.minibatch_size
    planned = config.update_epochs * n_mb
    keys = ("obs", "actions", "logprobs", "values", "returns")
    loss_log = torch.zeros(planned, 3)  # policy_loss, value_loss, entropy per minibatch
    logratio_log = torch.zeros(planned, mb_size)
    evaluated = steps = 0
    stopped = False
    for epoch_index in range(config.update_epochs):
        if recompute is not None and epoch_index > 0:
            batch = {**batch}
            batch["advantages"], batch["returns"] = recompute()
        order = torch.from_numpy(rng.permutation(config.batch_size))
        epoch = {k: batch[k].index_select(0, order) for k in keys}
        adv = batch["advantages"].index_select(0, order).view(n_mb, mb_size)
        if config.norm_adv and mb_size > 1:
            adv = (adv - adv.mean(1, keepdim=True)) / (adv.std(1, keepdim=True) + 1e-8)
        for i in range(n_mb):
            mb = slice(i * mb_size, (i + 1) * mb_size)
            loss, loss_terms, logratio = loss_fn(epoch["obs"][mb], epoch["actions"][mb], epoch["logprobs"][mb],
                                                 epoch["values"][mb], epoch["returns"][mb], adv[i])
            loss_log[evaluated] = loss_terms
            logratio_log[evaluated] = logratio
            evaluated += 1
            if config.target_kl is not None and losses.approx_kl(logratio).item() > config.target_kl:
                stopped = True
                break
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if isinstance(optimizer, FlatAdam):
                optimizer.clip_grad_norm_(config.max_grad_norm)
                optimizer.lean_step()
            else:
                nn.utils.clip_grad_norm_(params, config.max_grad_norm, foreach=True)
                optimizer.step()
            steps += 1
        if stopped:
            break
    with torch.no_grad():
        policy_loss, value_loss, entropy_mean = loss_log[:evaluated].mean(0).tolist()
        logratios = logratio_log[:evaluated]
        approx_kl = float(losses.approx_kl(logratios))  # equal-sized minibatches: mean of their means
        clipfrac = float(losses.clip_fraction(torch.exp(logratios), config.clip_coef))
    action_std = None if agent.discrete else float(torch.exp(agent.log_std.detach()).mean())
    return UpdateStats(policy_loss, value_loss, entropy_mean, approx_kl, clipfrac, steps / planned, action_std)


def _check_finite(agent: ActorCritic, stats: UpdateStats, iteration: int) -> None:
    for name in ("policy_loss", "value_loss", "entropy", "approx_kl"):
        value = getattr(stats, name)
        if not math.isfinite(value):
            raise TrainingDiverged(f"{name} became {value} in iteration {iteration}")
    for name, p in agent.named_parameters():
        if not bool(torch.isfinite(p).all()):
            raise TrainingDiverged(f"parameter {name} became non-finite in iteration {iteration}")


def train(config: Config, run_dir: Path, on_iteration: Callable[[dict[str, Any]], None] | None = None,
          resume: bool = False) -> TrainResult:
    """Train one seed with one thread for torch and numpy's BLAS (see :func:`_train`).

    The matrices are small: a second BLAS thread only adds hand-offs, and when another process
    (another seed) holds the other core those hand-offs cost milliseconds per matrix product
    (measured: a 64-row forward pass took 1.3 ms with OpenBLAS's 2 threads, 0.2 ms with 1).
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
    run_dir = Path(run_dir)
    start = time.perf_counter()
    checkpoint_path = run_dir / "checkpoint.pt"
    state = load_checkpoint(checkpoint_path) if resume else None
    for stale in run_dir.glob(".*.tmp"):  # atomic writes cut short by a hard kill (ppo_cli.files)
        stale.unlink()
    if state is not None and Config.from_dict(state["config"]).replace(total_steps=config.total_steps) != config:
        raise ValueError(f"{checkpoint_path} was trained with another config; only total_steps may change")

    seeds = _Seeds.from_seed(config.seed, config.num_envs)
    rng = seeds.rng
    envs = make_env_batch(config.env_id, config.num_envs, seeds.env_seeds, config.backend)
    spaces = envs.spaces
    agent = ActorCritic(spaces.obs_dim, spaces.act_dim, config.hidden_sizes, spaces.discrete, seeds.torch_seed,
                        config.init_log_std)
    optimizer = make_optimizer(agent, config)
    loss_fn = make_loss_fn(agent, config, optimizer)
    obs_filter = ObservationNormalizer((spaces.obs_dim,), config.obs_clip, enabled=config.norm_obs)
    reward_filter = RewardNormalizer(config.num_envs, config.gamma, config.reward_clip, enabled=config.norm_reward)
    action_shape = () if spaces.discrete else (spaces.act_dim,)
    storage = RolloutStorage(config.num_steps, config.num_envs, spaces.obs_dim, action_shape)
    versions = package_versions()

    def snapshot(global_step: int, iteration: int) -> dict[str, Any]:
        return copy.deepcopy({
            "config": config.to_dict(), "env_id": config.env_id, "global_step": global_step,
            "iteration": iteration, "versions": versions,
            "spaces": {"obs_dim": spaces.obs_dim, "act_dim": spaces.act_dim, "discrete": spaces.discrete},
            "model": agent.state_dict(), "optimizer": optimizer.state_dict(),
            "obs_rms": to_tensors(obs_filter.state_dict()), "reward_rms": to_tensors(reward_filter.state_dict()),
            "rng": rng.bit_generator.state, "envs": to_tensors(envs.state_dict()),
            "recent_returns": list(recent_returns), "elapsed_s": elapsed + time.perf_counter() - start,
        })

    (run_dir / "config.json").write_text(config.to_json(), encoding="utf-8")
    if state is None:
        global_step, first_iteration, recent_returns, elapsed = 0, 1, [], 0.0
        obs = obs_filter(envs.reset())
        progress_log = CsvLog(run_dir / "progress.csv", PROGRESS_COLUMNS)
        episode_log = CsvLog(run_dir / "episodes.csv", EPISODE_COLUMNS)
    else:
        agent.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        obs_filter.load_state_dict(to_numpy(state["obs_rms"]))
        reward_filter.load_state_dict(to_numpy(state["reward_rms"]))
        rng.bit_generator.state = state["rng"]
        envs.load_state_dict(to_numpy(state["envs"]))
        obs = obs_filter.normalize(envs.obs)  # the statistics already include these observations
        global_step, first_iteration = int(state["global_step"]), int(state["iteration"]) + 1
        recent_returns, elapsed = list(state["recent_returns"]), float(state["elapsed_s"])
        progress_log = CsvLog(run_dir / "progress.csv", PROGRESS_COLUMNS, keep_until_step=global_step)
        episode_log = CsvLog(run_dir / "episodes.csv", EPISODE_COLUMNS, keep_until_step=global_step)
    policy = RolloutPolicy(agent)

    result = TrainResult(config.seed, str(run_dir), "finished", checkpoint=str(checkpoint_path))
    if state is not None and not envs.exact:
        result.message = ("the environments could not be replayed exactly; resumed from new episodes"
                          if config.backend == "envpool" else
                          "the environment did not replay exactly; resumed from the replayed state")
    num_steps, num_envs = config.num_steps, config.num_envs
    last_good = snapshot(global_step, first_iteration - 1)
    saved_iteration = first_iteration - 1 if state is not None else -1
    with _DeferredInterrupt() as interrupt:
        try:
            for iteration in range(first_iteration, config.num_iterations + 1):
                iter_start = time.perf_counter()
                lr = config.lr * (1.0 - (iteration - 1) / config.num_iterations) if config.anneal_lr else config.lr
                for group in optimizer.param_groups:
                    group["lr"] = lr

                # ---- collect
                if spaces.discrete:
                    noise = rng.random((num_steps, num_envs, 1), dtype=np.float32)
                else:
                    noise = rng.standard_normal((num_steps, num_envs, spaces.act_dim), dtype=np.float32)
                for t in range(num_steps):
                    interrupt.check()
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
                global_step += num_steps * num_envs
                last_value = policy.value(obs)

                # ---- advantages
                advantages, returns = storage.gae(last_value, config.gamma, config.gae_lambda)
                flat = config.batch_size
                batch = {
                    "obs": torch.from_numpy(storage.obs.reshape(flat, -1)),
                    "actions": torch.from_numpy(storage.actions.reshape((flat,) + action_shape)),
                    "logprobs": torch.from_numpy(storage.logprobs.reshape(flat)),
                    "values": torch.from_numpy(storage.values.reshape(flat)),
                    "advantages": _flat_f32(advantages),
                    "returns": _flat_f32(returns),
                }

                # ---- update
                interrupt.check()
                update_start = time.perf_counter()
                recompute = functools.partial(recompute_advantages, agent, storage, obs, config)
                stats = ppo_update(agent, optimizer, batch, config, rng, loss_fn,
                                   recompute if config.recompute_adv else None)
                _check_finite(agent, stats, iteration)
                policy.sync(agent)
                update_time = time.perf_counter() - update_start

                # ---- log
                finished, envs.finished = envs.finished, []
                if finished:
                    episode_log.write_many([(global_step, ret, length) for ret, length in finished])
                    recent_returns = (recent_returns + [ret for ret, _ in finished])[-FINAL_RETURN_EPISODES:]
                now = time.perf_counter()
                row = {
                    "global_step": global_step, "iteration": iteration,
                    "time_s": round(elapsed + now - start, 3), "sps": int(num_steps * num_envs / (now - iter_start)),
                    "episodic_return": float(np.mean([r for r, _ in finished])) if finished else None,
                    "episodic_length": float(np.mean([n for _, n in finished])) if finished else None,
                    "episodes": len(finished),
                    "policy_loss": stats.policy_loss, "value_loss": stats.value_loss, "entropy": stats.entropy,
                    "action_std": stats.action_std, "approx_kl": stats.approx_kl, "clipfrac": stats.clipfrac,
                    "explained_variance": explained_variance(storage.values.ravel(), returns.ravel()),
                    "learning_rate": lr, "update_fraction": stats.update_fraction,
                }
                progress_log.write(row)
                last_good = snapshot(global_step, iteration)
                if iteration % config.checkpoint_interval == 0 or iteration == config.num_iterations:
                    save_checkpoint(checkpoint_path, last_good)
                    saved_iteration = iteration
                if on_iteration is not None:
                    on_iteration({**row, "total_steps": config.num_iterations * config.batch_size,
                                  "update_time_s": update_time, "final_return": _mean(recent_returns)})
        except KeyboardInterrupt:
            result.status = "interrupted"
            result.message = f"interrupted; saved the state after iteration {last_good['iteration']}"
        except TrainingDiverged as exc:
            result.status = "failed"
            result.message = f"{exc}; kept the state after iteration {last_good['iteration']}"
        finally:
            if last_good["iteration"] != saved_iteration:
                save_checkpoint(checkpoint_path, last_good)
            progress_log.close()
            episode_log.close()
            envs.close()
    result.global_step = last_good["global_step"]
    result.iterations = last_good["iteration"]
    result.final_return = _mean(recent_returns)
    result.wall_time_s = time.perf_counter() - start
    return result


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None
