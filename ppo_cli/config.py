"""The one hyperparameter record that travels from the CLI to the trainer and into ``config.json``.

Every field has a ``help`` text in its metadata; the CLI builds its ``ppo train`` options from
these fields (``clip_coef`` -> ``--clip-coef``), so a name, its default and its documentation
live here once.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any


MAX_UPDATE_EPOCHS = 10_000


def is_int(value: Any) -> bool:
    """An integer, not a bool or a float that happens to be whole (a crafted config.json or checkpoint)."""
    return isinstance(value, int) and not isinstance(value, bool)


class ConfigError(ValueError):
    """A hyperparameter value that cannot be used. ``fields`` names the offending field(s)."""

    def __init__(self, fields: str | tuple[str, ...], message: str) -> None:
        super().__init__(message)
        self.fields = (fields,) if isinstance(fields, str) else tuple(fields)


BACKENDS = ("gymnasium", "envpool")  # how environments are stepped (see ppo_cli.envs)
UPDATES = ("auto", "fused", "autograd")  # how a minibatch's loss and gradient are computed (see ppo_cli.update)
ACTIVATIONS = ("tanh", "relu", "elu")  # of the hidden layers (see ppo_cli.agent)


def _opt(default: Any, help: str) -> Any:  # noqa: A002 - "help" is the natural name here
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True, kw_only=True)
class Config:
    """Hyperparameters of one PPO training run (one seed).

    Defaults are the config that ``benchmarks/mujoco_suite.py`` measured on Hopper, HalfCheetah and
    Walker2d (docs/benchmarks.md): 64 environments x 32 steps (2048 per rollout), 10 epochs of
    32 minibatches, advantages recomputed each epoch and not normalised, no value clipping, initial
    action std exp(-0.5), close to Tianshou's MuJoCo PPO. ``benchmarks/throughput.py`` pins the
    classic single-environment settings (Schulman et al. 2017; SB3, CleanRL) instead. Derived
    sizes (``batch_size``, ``minibatch_size``, ``num_iterations``) are properties.
    """

    # the run
    env_id: str = _opt("", "Gymnasium id or 'package.module:attr' of the environment.")
    seed: int = _opt(0, "Seed of this run (environments, initial weights, sampling, minibatches).")
    total_steps: int = _opt(1_000_000, "Environment steps to train for (all environments together).")
    # collecting: num_envs x num_steps transitions per iteration
    num_envs: int = _opt(64, "Environments stepped side by side in one process.")
    num_steps: int = _opt(32, "Steps per environment in each rollout.")
    action_repeat: int = _opt(1, "Hold each action for this many environment steps, summing their rewards and "
                                 "stopping at an episode end (a frame skip); steps count the agent's actions.")
    stagger_resets: bool = _opt(False, "Cut each environment's first episode at a random step up to its time limit "
                                       "(a truncation, bootstrapped; its return is not logged), so that episodes "
                                       "of one fixed length (DMC) do not all restart on the same step.")
    # returns and advantages
    gamma: float = _opt(0.99, "Discount factor, in (0, 1].")
    gae_lambda: float = _opt(0.95, "GAE lambda, in (0, 1].")
    norm_adv: bool = _opt(False, "Normalise advantages to mean 0, std 1 within each minibatch.")
    recompute_adv: bool = _opt(True, "Recompute values and GAE advantages with the current critic "
                                      "before every update epoch after the first.")
    # the loss
    clip_coef: float = _opt(0.2, "PPO ratio clip (and value clip, with --clip-vloss).")
    clip_vloss: bool = _opt(False, "Clip the value update around the old value (max of both errors).")
    dual_clip: float | None = _opt(
        None, "Dual-clip bound c > 1: for negative advantages the objective is at least c * A."
    )
    ent_coef: float = _opt(0.0, "Entropy bonus coefficient.")
    vf_coef: float = _opt(0.25, "Value loss coefficient.")
    # the update and its optimizer
    update_epochs: int = _opt(10, "Passes over each rollout batch.")
    num_minibatches: int = _opt(32, "Minibatches per pass; must divide num_steps * num_envs.")
    lr: float = _opt(3e-4, "Adam learning rate (eps 1e-5).")
    anneal_lr: bool = _opt(True, "Decay the learning rate linearly to 0 over the run.")
    max_grad_norm: float = _opt(0.5, "Global gradient-norm clip.")
    target_kl: float | None = _opt(
        None, "Stop this iteration's remaining updates once approx KL exceeds it (off if unset)."
    )
    # observation and reward filters
    norm_obs: bool = _opt(True, "Normalise observations with running mean/std (clip +-obs_clip).")
    norm_reward: bool = _opt(True, "Scale rewards by the running std of the discounted return.")
    obs_clip: float = _opt(10.0, "Clip bound of normalised observations.")
    reward_clip: float = _opt(10.0, "Clip bound of normalised rewards.")
    # the networks
    hidden_sizes: tuple[int, ...] = _opt((64, 64), "Hidden layer widths of both MLPs, e.g. 64,64.")
    activation: str = field(default="tanh", metadata={
        "help": "Activation of the hidden layers of both MLPs (SB3's activation_fn; CleanRL's is tanh).",
        "choices": ACTIVATIONS})
    init_log_std: float = _opt(-0.5, "Initial log standard deviation of the Gaussian policy.")
    # evaluating and recording while training
    eval_interval: int = _opt(0, "Evaluate the deterministic policy every this many iterations (and at the end) "
                                 "into evaluations.csv, keeping the best as best.pt (0: never).")
    eval_episodes: int = _opt(10, "Episodes per evaluation during training.")
    video_interval: int = _opt(0, "Record a short off-screen clip of the deterministic policy every this many "
                                  "iterations into videos/ (0: never).")
    tensorboard: bool = _opt(False, "Also write every progress.csv column and evaluation as TensorBoard scalars "
                                    "in the seed folder (the tensorboard extra).")
    # how the run is carried out
    checkpoint_interval: int = _opt(10, "Write checkpoint.pt every this many iterations (and at the end).")
    step_timeout: float | None = _opt(
        None, "Fail the seed when one environment step takes longer than this many seconds (off if unset)."
    )
    backend: str = field(default="gymnasium", metadata={
        "help": "Environment stepping: gymnasium (any environment, one loop) or envpool (C++ worker "
                "threads; MuJoCo and classic tasks it lists; pip install -e '.[fast]').",
        "choices": BACKENDS})
    update: str = field(default="auto", metadata={
        "help": "Minibatch update: fused (the loss and its gradient in one numpy autograd node; Gaussian "
                "policies, CPU), autograd (the same loss composed from torch operations: the reference), or "
                "auto (fused where it applies, else autograd).",
        "choices": UPDATES})
    compile: bool = _opt(False, "torch.compile the autograd update's minibatch loss (needs a C compiler; eager "
                                "if it fails). Implies --update autograd.")


    def __post_init__(self) -> None:
        sizes = self.hidden_sizes
        if not isinstance(sizes, (list, tuple)) or not all(map(is_int, sizes)):  # int() would take 8.7 or "8"
            raise ConfigError("hidden_sizes", f"hidden_sizes must be positive widths like 64,64, got {sizes!r}")
        object.__setattr__(self, "hidden_sizes", tuple(sizes))
        self._validate()

    # ----------------------------------------------------------------------------- derived sizes
    @property
    def batch_size(self) -> int:
        """Transitions per rollout: ``num_steps * num_envs``."""
        return self.num_steps * self.num_envs

    @property
    def minibatch_size(self) -> int:
        return self.batch_size // self.num_minibatches

    @property
    def num_iterations(self) -> int:
        """Rollout + update cycles: ``total_steps // batch_size``."""
        return self.total_steps // self.batch_size

    # ----------------------------------------------------------------------------- validation
    def _validate(self) -> None:
        if not self.env_id:
            raise ConfigError("env_id", "env_id is empty; give a Gymnasium id or 'module:attr'")
        for name in ("total_steps", "num_envs", "num_steps", "update_epochs", "num_minibatches",
                     "checkpoint_interval", "eval_episodes", "action_repeat"):
            value = getattr(self, name)
            if not is_int(value) or value < 1:
                raise ConfigError(name, f"{name} must be a positive integer, got {value!r}")
        if self.update_epochs > MAX_UPDATE_EPOCHS:  # the update sizes its per-minibatch log by epochs x minibatches
            raise ConfigError("update_epochs", f"update_epochs must be at most {MAX_UPDATE_EPOCHS:,} (PPO uses "
                                               f"3-30), got {self.update_epochs}")
        for name in ("eval_interval", "video_interval"):
            value = getattr(self, name)
            if not is_int(value) or value < 0:
                raise ConfigError(name, f"{name} must be 0 (never) or a number of iterations, got {value!r}")
        if not is_int(self.seed) or self.seed < 0:
            raise ConfigError("seed", f"seed must be an integer >= 0, got {self.seed!r}")
        if not self.hidden_sizes or min(self.hidden_sizes) < 1:
            raise ConfigError("hidden_sizes", f"hidden_sizes must be positive widths like 64,64, "
                                              f"got {','.join(map(str, self.hidden_sizes)) or 'nothing'}")
        for name in ("lr", "clip_coef", "max_grad_norm", "obs_clip", "reward_clip"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(name, f"{name} must be a positive number, got {value}")
        for name in ("ent_coef", "vf_coef"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ConfigError(name, f"{name} must be >= 0, got {value}")
        if not (math.isfinite(self.init_log_std) and -10.0 <= self.init_log_std <= 2.0):
            raise ConfigError("init_log_std", f"init_log_std must be in [-10, 2], got {self.init_log_std}")
        for name in ("gamma", "gae_lambda"):
            value = getattr(self, name)
            if not 0 < value <= 1:
                raise ConfigError(name, f"{name} must be in (0, 1], got {value}")
        if self.dual_clip is not None and not (math.isfinite(self.dual_clip) and self.dual_clip > 1):
            raise ConfigError("dual_clip", f"dual_clip must be > 1 (e.g. 3), got {self.dual_clip}")
        for name in ("target_kl", "step_timeout"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ConfigError(name, f"{name} must be a positive number, got {value}")
        if self.batch_size % self.num_minibatches:
            divisors = [d for d in (64, 32, 16, 8, 4, 2, 1) if self.batch_size % d == 0]
            raise ConfigError(
                ("num_minibatches", "num_steps", "num_envs"),
                f"num_minibatches {self.num_minibatches} does not divide the batch size "
                f"{self.batch_size} (num_steps {self.num_steps} x num_envs {self.num_envs}); "
                f"try {divisors[0]}",
            )
        if self.backend not in BACKENDS:
            raise ConfigError("backend", f"backend must be {' or '.join(BACKENDS)}, got {self.backend!r}")
        if self.action_repeat > 1 and self.backend == "envpool":
            raise ConfigError(("action_repeat", "backend"), f"action_repeat {self.action_repeat} needs the gymnasium "
                                                            f"backend (envpool steps its own environments)")
        if self.stagger_resets and self.backend == "envpool":
            raise ConfigError(("stagger_resets", "backend"), "stagger_resets needs the gymnasium backend (envpool "
                                                             "resets its own environments)")
        if self.activation not in ACTIVATIONS:
            raise ConfigError("activation", f"activation must be {', '.join(ACTIVATIONS)}, got {self.activation!r}")
        if self.update not in UPDATES:
            raise ConfigError("update", f"update must be {', '.join(UPDATES)}, got {self.update!r}")
        if self.compile and self.update == "fused":
            raise ConfigError(("compile", "update"), "compile applies to the autograd path only, and update is "
                                                     "fused; drop one of them")
        if self.total_steps < self.batch_size:
            raise ConfigError(
                ("total_steps", "num_steps", "num_envs"),
                f"total_steps {self.total_steps} is less than one rollout batch of {self.batch_size} "
                f"(num_steps {self.num_steps} x num_envs {self.num_envs}); raise total_steps or "
                f"lower num_steps",
            )

    # ----------------------------------------------------------------------------- JSON
    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["hidden_sizes"] = list(self.hidden_sizes)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Config:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(tuple(unknown), f"unknown config field(s): {', '.join(unknown)}")
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Config:
        return cls.from_dict(json.loads(text))

    def replace(self, **changes: Any) -> Config:
        return dataclasses.replace(self, **changes)


# Named sets of field values that stand in for the defaults (``ppo train --preset NAME``); options
# given on the command line still win over them. Each maps a task family (the environment id
# without its version) to its values; "*" is any other task.
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    # PPO as Schulman et al. 2017 ran it and SB3 and CleanRL ship it: the settings behind most
    # published PPO curves, and the ones benchmarks/throughput.py times against SB3
    "classic": {"*": {"num_envs": 1, "num_steps": 2048, "gae_lambda": 0.95, "clip_vloss": True, "vf_coef": 0.5,
                      "norm_adv": True, "recompute_adv": False, "init_log_std": 0.0}},
    # the defaults, except on the tasks where other values measured better at 1M steps
    # (docs/benchmarks.md): per-task tuning like rl-zoo's, under one name. On DMC (5 seeds, 50
    # evaluation episodes each): 256 x 256 networks and GAE lambda 0.9 on cheetah-run (10 seeds),
    # 256 x 256 with ReLU on walker-walk and with ELU on walker-run (tanh nets crawl after a backward
    # start), an initial action std of 1 and staggered resets on finger-spin, 256 x 256 and std 1 on
    # reacher-hard, staggered resets on cartpole-swingup
    "tuned": {"Walker2d": {"gae_lambda": 0.9},
              "dm_control/cheetah-run": {"hidden_sizes": (256, 256), "gae_lambda": 0.9},
              "dm_control/walker-walk": {"hidden_sizes": (256, 256), "activation": "relu"},
              "dm_control/walker-run": {"hidden_sizes": (256, 256), "activation": "elu"},
              "dm_control/finger-spin": {"init_log_std": 0.0, "stagger_resets": True},
              "dm_control/reacher-hard": {"hidden_sizes": (256, 256), "init_log_std": 0.0},
              "dm_control/cartpole-swingup": {"stagger_resets": True}},
}


def task_family(env_id: str) -> str:
    """``Walker2d-v4`` -> ``Walker2d``; ids without a version stay as they are."""
    name, sep, version = env_id.rpartition("-v")
    return name if sep and version.isdigit() else env_id


def preset(name: str, env_id: str = "") -> dict[str, Any]:
    """The field values preset ``name`` gives ``env_id`` (a copy; empty where it keeps the defaults)."""
    if name not in PRESETS:
        raise ConfigError("preset", f"unknown preset {name!r}; choose from {', '.join(sorted(PRESETS))}")
    values = PRESETS[name]
    return dict(values.get(task_family(env_id), values.get("*", {})))


def config_fields() -> tuple[dataclasses.Field, ...]:
    """The dataclass fields of :class:`Config`, in declaration order (used to build CLI options)."""
    return dataclasses.fields(Config)
