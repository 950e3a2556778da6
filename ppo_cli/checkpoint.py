"""Checkpoints: plain tensors and containers, loadable with ``torch.load(weights_only=True)``.

Contents (``FORMAT`` marks a file as ours):

* ``format``, ``format_version``, ``versions`` (package versions at save time);
* ``config`` (the :class:`~ppo_cli.config.Config` as a dict), ``env_id``, ``global_step``, ``iteration``;
* ``model`` (the :class:`~ppo_cli.agent.ActorCritic` state dict), ``optimizer`` (Adam state);
* ``obs_rms`` and ``reward_rms`` (filter statistics as float64 tensors, ``count`` as a float);
* ``spaces`` (observation / action sizes and whether actions are discrete).

Writing is atomic: the file is written next to its destination under a temporary name, synced
and renamed over it, so a crash leaves either the old or the new checkpoint, never half of one.
"""

from __future__ import annotations

import pickle
import re
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ppo_cli.files import atomic_write

FORMAT = "ppo_cli.checkpoint"
FORMAT_VERSION = 1
_PACKAGES = ("ppo-cli", "torch", "gymnasium", "mujoco", "numpy")


class CheckpointError(ValueError):
    """A file that is not a loadable ``ppo`` checkpoint."""


def package_versions() -> dict[str, str]:
    versions = {}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


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
