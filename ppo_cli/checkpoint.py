"""Checkpoints: plain tensors and containers, loadable with ``torch.load(weights_only=True)``.

Contents (``FORMAT`` marks a file as ours):

* ``format``, ``format_version``, ``versions`` (package versions at save time, and under
  ``kernels`` the instruction sets numpy, its BLAS and torch compute with: see :func:`kernels`);
* ``config`` (the :class:`~ppo_cli.config.Config` as a dict), ``env_id``, ``global_step``, ``iteration``;
* ``model`` (the :class:`~ppo_cli.agent.ActorCritic` state dict), ``optimizer`` (Adam state);
* ``obs_rms`` and ``reward_rms`` (filter statistics as float64 tensors, ``count`` as a float);
* ``spaces`` (observation / action sizes and whether actions are discrete);
* for ``--resume``: ``rng`` (the sampling generator), ``envs`` (how each current episode began and
  its actions, for replay), ``recent_returns``, ``elapsed_s``.

Writing is atomic: the file is written next to its destination under a temporary name, synced
and renamed over it, so a crash leaves either the old or the new checkpoint, never half of one.

Reading never runs code (``weights_only=True``), and :func:`read_checkpoint` checks the contents
before anything is built from them: every tensor finite, the network's tensors exactly the shapes
its config and spaces imply (so a crafted config cannot make ``ppo`` build a network the file
does not hold), the filter statistics of the observation size with non-negative variances, the
counters non-negative integers.
"""

from __future__ import annotations

import math
import pickle
import re
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ppo_cli.config import Config, ConfigError, is_int
from ppo_cli.files import atomic_write

FORMAT = "ppo_cli.checkpoint"
FORMAT_VERSION = 1
_PACKAGES = ("ppo-cli", "torch", "gymnasium", "mujoco", "numpy", "envpool", "dm-control", "shimmy")


class CheckpointError(ValueError):
    """A file that is not a loadable ``ppo`` checkpoint."""


def package_versions() -> dict[str, str]:
    versions = {}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    versions["kernels"] = kernels()
    return versions


def kernels() -> str:
    """The instruction sets this process's floating point runs on, e.g. ``numpy AVX512_SPR, OpenBLAS
    SkylakeX, torch AVX512``: numpy's SIMD loops, its BLAS and torch each pick kernels by CPU, and
    kernels for another instruction set round differently, so the same seed and code train another
    trajectory on a CPU where this differs (docs/benchmarks.md, *Reproducibility*)."""
    parts = []
    try:  # numpy's highest dispatched SIMD target this CPU enables (numpy has no public API for it)
        from numpy._core import _multiarray_umath as umath

        enabled = [t for t in umath.__cpu_dispatch__ if umath.__cpu_features__.get(t)]
        parts.append(f"numpy {enabled[-1] if enabled else 'baseline'}")
    except (ImportError, AttributeError):
        parts.append("numpy unknown")
    try:
        from threadpoolctl import threadpool_info

        blas = [i for i in threadpool_info() if i.get("user_api") == "blas" and "numpy" in i.get("filepath", "")]
        parts.append(f"{blas[0]['internal_api'].replace('openblas', 'OpenBLAS')} {blas[0].get('architecture')}"
                     if blas else "BLAS unknown")
    except Exception:  # noqa: BLE001 - threadpoolctl inspects loaded libraries: never fail a save for it
        parts.append("BLAS unknown")
    parts.append(f"torch {torch.backends.cpu.get_cpu_capability()}")
    return ", ".join(parts)


def to_tensors(state: Any) -> Any:
    """Turn numpy arrays (recursively) into torch tensors so ``weights_only`` loading accepts them."""
    if isinstance(state, np.ndarray):
        return torch.from_numpy(state.copy())
    if isinstance(state, dict):
        return {k: to_tensors(v) for k, v in state.items()}
    if isinstance(state, list):
        return [to_tensors(v) for v in state]
    return state


def to_numpy(state: Any) -> Any:
    """Inverse of :func:`to_tensors`."""
    if isinstance(state, torch.Tensor):
        return state.numpy()
    if isinstance(state, dict):
        return {k: to_numpy(v) for k, v in state.items()}
    if isinstance(state, list):
        return [to_numpy(v) for v in state]
    return state


def required_bytes(config: Any, obs_dim: int, act_dim: int) -> int:
    """Generous estimate of the disk one seed needs: two checkpoints (during the atomic replace) and the CSVs.

    A checkpoint holds the weights and Adam's two moments (3 x 4 bytes a parameter), the replay
    actions of the current episodes and some metadata; ``episodes.csv`` is budgeted for episodes
    of 10 steps on average.
    """
    params = act_dim
    for out_dim in (act_dim, 1):
        width_in = obs_dim
        for width in (*config.hidden_sizes, out_dim):
            params += (width_in + 1) * width
            width_in = width
    checkpoint = 12 * params + config.num_envs * 1000 * act_dim * 8 + 256 * 1024
    logs = config.num_iterations * 400 + config.total_steps // 10 * 40
    return 2 * checkpoint + logs


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` (plus format markers) to ``path`` atomically."""
    payload = {"format": FORMAT, "format_version": FORMAT_VERSION, **state}
    atomic_write(path, lambda f: torch.save(payload, f))


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load and check a checkpoint; never unpickles arbitrary objects (``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist or is not a file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load fails in many ways on foreign bytes; none of them runs code
        unsupported = re.search(r"unsupported global:?\s+(?:GLOBAL\s+)?(\S+)", str(exc), re.IGNORECASE)
        if isinstance(exc, pickle.UnpicklingError) and unsupported:
            raise CheckpointError(f"{path} was refused: it holds objects other than plain tensors and containers "
                                  f"({unsupported.group(1)}); loading never runs code from a file") from None
        raise CheckpointError(f"{path} is truncated or not a checkpoint ({type(exc).__name__})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a ppo checkpoint (no '{FORMAT}' marker)")
    if state.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path} has checkpoint format {state.get('format_version')}, "
                              f"this ppo reads {FORMAT_VERSION}")
    return state


def network_shapes(obs_dim: int, act_dim: int, hidden_sizes: tuple[int, ...], discrete: bool) -> dict[str, tuple]:
    """The ``ActorCritic`` state-dict shapes for these sizes (stacked actor/critic layers), without building it."""
    sizes = [obs_dim, *hidden_sizes, act_dim]
    shapes: dict[str, tuple] = {}
    for k, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        shapes[f"weights.{k}"] = (2, fan_in, fan_out)
        shapes[f"biases.{k}"] = (2, 1, fan_out)
    if not discrete:
        shapes["log_std"] = (act_dim,)
    return shapes


def _fail(path: Path, what: str) -> CheckpointError:
    return CheckpointError(f"{path} is a damaged or crafted ppo checkpoint: {what}")


def _count(state: dict[str, Any], key: str, path: Path) -> int:
    value = state.get(key)
    if not is_int(value) or value < 0:
        raise _fail(path, f"{key} must be an integer >= 0, got {value!r}"[:200])
    return value


def _finite(name: str, tensor: Any, shape: tuple, path: Path, non_negative: bool = False) -> None:
    if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point():
        raise _fail(path, f"{name} is not a floating-point tensor")
    if tuple(tensor.shape) != tuple(shape):
        raise _fail(path, f"{name} has shape {tuple(tensor.shape)}, its config and spaces need {tuple(shape)}")
    values = tensor.double()
    if not bool(torch.isfinite(values).all()):
        raise _fail(path, f"{name} holds NaN or infinite values")
    if non_negative and bool((values < 0).any()):
        raise _fail(path, f"{name} holds negative values")


def _statistics(name: str, stats: Any, shape: tuple, path: Path) -> None:
    if not isinstance(stats, dict):
        raise _fail(path, f"{name} is missing")
    _finite(f"{name}.mean", stats.get("mean"), shape, path)
    _finite(f"{name}.var", stats.get("var"), shape, path, non_negative=True)
    count = stats.get("count")
    if isinstance(count, bool) or not isinstance(count, (int, float)) or not math.isfinite(count) or count < 0:
        raise _fail(path, f"{name}.count must be a finite number >= 0, got {count!r}"[:200])


def check_contents(state: dict[str, Any], path: Path, resume: bool = False) -> Config:
    """Check what evaluation (and with ``resume``, training) reads from a loaded checkpoint; returns its config.

    Raises :class:`CheckpointError` naming the first problem.
    """
    try:
        config = Config.from_dict(state["config"])
    except (KeyError, TypeError, ConfigError) as exc:
        raise _fail(path, f"its config is not valid ({exc})") from None
    _count(state, "global_step", path)
    _count(state, "iteration", path)
    spaces = state.get("spaces")
    if not isinstance(spaces, dict) or not isinstance(spaces.get("discrete"), bool):
        raise _fail(path, "spaces is missing")
    obs_dim, act_dim = _count(spaces, "obs_dim", path), _count(spaces, "act_dim", path)
    if obs_dim < 1 or act_dim < 1:
        raise _fail(path, f"spaces obs_dim {obs_dim} / act_dim {act_dim} must be positive")
    model = state.get("model")
    want = network_shapes(obs_dim, act_dim, config.hidden_sizes, spaces["discrete"])
    if not isinstance(model, dict) or set(model) != set(want):
        raise _fail(path, f"its model tensors are not those of hidden_sizes {list(config.hidden_sizes)} "
                          f"(obs_dim {obs_dim}, act_dim {act_dim})")
    for name, shape in want.items():
        _finite(f"model.{name}", model[name], shape, path)
    _statistics("obs_rms", state.get("obs_rms"), (obs_dim,), path)
    if resume:
        _check_training_state(state, config, sum(math.prod(s) for s in want.values()), path)
    return config


def _check_training_state(state: dict[str, Any], config: Config, num_params: int, path: Path) -> None:
    """What only ``--resume`` reads: reward filter, optimizer, random generator, replay data, counters."""
    _statistics("reward_rms", state.get("reward_rms"), (), path)
    _finite("reward_rms.returns", state["reward_rms"].get("returns"), (config.num_envs,), path)
    optimizer = state.get("optimizer")
    if not isinstance(optimizer, dict) or not isinstance(optimizer.get("state"), dict):
        raise _fail(path, "optimizer is missing")
    moments = [s for s in optimizer["state"].values() if isinstance(s, dict)]
    for key in ("exp_avg", "exp_avg_sq"):
        tensors = [s.get(key) for s in moments]
        if moments and (not all(isinstance(t, torch.Tensor) for t in tensors)
                        or sum(t.numel() for t in tensors) != num_params
                        or not all(bool(torch.isfinite(t).all()) for t in tensors)):
            raise _fail(path, f"optimizer {key} does not fit the model or is not finite")
    try:
        np.random.PCG64().state = state["rng"]
    except (KeyError, TypeError, ValueError) as exc:
        raise _fail(path, f"rng is not a generator state ({type(exc).__name__})") from None
    envs = state.get("envs")
    if not isinstance(envs, dict):
        raise _fail(path, "envs is missing")
    if "episode_start" in envs:
        starts, actions = envs.get("episode_start"), envs.get("actions")
        if (not isinstance(starts, list) or not isinstance(actions, list)
                or len(starts) != config.num_envs or len(actions) != config.num_envs):
            raise _fail(path, f"envs must hold the replay data of {config.num_envs} environments")
        for k, start in enumerate(starts):
            if not isinstance(start, dict) or not _is_rng_state(start.get("rng")):
                raise _fail(path, f"envs.episode_start[{k}] is not a seed or a generator state")
        action_shape = () if state["spaces"]["discrete"] else (state["spaces"]["act_dim"],)
        for k, taken in enumerate(actions):
            if not isinstance(taken, torch.Tensor) or tuple(taken.shape[1:]) != action_shape or taken.ndim < 1:
                raise _fail(path, f"envs.actions[{k}] is not a list of actions of shape {action_shape}")
            if taken.is_floating_point() and not bool(torch.isfinite(taken).all()):
                raise _fail(path, f"envs.actions[{k}] holds NaN or infinite values")
        first = envs.get("first")  # --stagger-resets: still in the first episode (absent before it existed)
        if first is not None and not (isinstance(first, torch.Tensor) and first.dtype == torch.bool
                                      and tuple(first.shape) == (config.num_envs,)):
            raise _fail(path, f"envs.first must hold one boolean for each of the {config.num_envs} environments")
    returns, elapsed = state.get("recent_returns"), state.get("elapsed_s")
    if not isinstance(returns, list) or not all(isinstance(r, (int, float)) and math.isfinite(r) for r in returns):
        raise _fail(path, "recent_returns must be a list of finite numbers")
    if isinstance(elapsed, bool) or not isinstance(elapsed, (int, float)) or not elapsed >= 0:
        raise _fail(path, f"elapsed_s must be a number >= 0, got {elapsed!r}"[:200])


_BIT_GENERATORS = ("PCG64", "PCG64DXSM", "MT19937", "Philox", "SFC64")  # numpy's own


def _is_rng_state(state: Any) -> bool:
    """None (the episode began from a seed), a numpy bit generator's state, or a legacy RandomState's
    (see ``envs.rng_state``): tried on a fresh generator of the kind it names, nothing else called."""
    if state is None:
        return True
    try:
        if isinstance(state, dict) and "random_state" in state:
            np.random.RandomState().set_state(to_numpy(state["random_state"]))
        elif isinstance(state, dict) and state.get("bit_generator") in _BIT_GENERATORS:
            getattr(np.random, state["bit_generator"])().state = state
        else:
            return False
    except (KeyError, TypeError, ValueError):
        return False
    return True


def read_checkpoint(path: Path, resume: bool = False) -> dict[str, Any]:
    """:func:`load_checkpoint` and :func:`check_contents`: a checkpoint safe to build from."""
    state = load_checkpoint(path)
    check_contents(state, Path(path), resume)
    return state
