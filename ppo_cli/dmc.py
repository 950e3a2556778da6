"""DeepMind Control Suite tasks by name, through Shimmy (the ``dmc`` extra).

``dmc:cheetah-run`` (DMC's domain and task, as DMC spells them) and Shimmy's registered id
``dm_control/cheetah-run-v0`` name the same task; runs, checkpoints and ``config.json`` keep the
registered id, so a checkpoint of a DMC task is built from Gymnasium's registry like any other.

Observations: DMC's observation dict, flattened by Gymnasium's ``FlattenObservation`` in the order
of Shimmy's ``Dict`` space, which sorts the keys by name (walker: ``height``, ``orientations``,
``velocity``), each entry row-major; the same order at training, resume and evaluation. Episodes
end at DMC's time limit (1000 steps) as a truncation, so the value of the last state is
bootstrapped. A dm_control environment draws each episode's start from a legacy
``numpy.random.RandomState``, which resume restores (``envs.rng_state``).

dm_control chooses its OpenGL backend when it is imported, from ``MUJOCO_GL``: on a machine without
a display this module probes the off-screen backends first (as ``ppo eval --render`` does), so that
rendering works later with ``MUJOCO_GL`` unset; where none starts, rendering is turned off and
training goes on.
"""

from __future__ import annotations

import logging
import os
import sys
from importlib import metadata
from typing import Any

import gymnasium as gym

PREFIX = "dmc:"
NAMESPACE = "dm_control/"
EXTRA = "pip install -c constraints.txt -e '.[dmc]'"


class DMCError(ValueError):
    """A DMC task that cannot be named or built here."""


def is_dmc(name: str) -> bool:
    return name.lower().startswith(PREFIX) or name.startswith(NAMESPACE)


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def register() -> None:
    """Import Shimmy, which registers the ``dm_control/`` ids, choosing dm_control's renderer first."""
    if "shimmy" in sys.modules and any(env_id.startswith(NAMESPACE) for env_id in gym.registry):
        return
    from ppo_cli.render import RenderError, has_display, use_offscreen_backend

    if "dm_control" not in sys.modules and not os.environ.get("MUJOCO_GL") and not has_display():
        try:
            use_offscreen_backend()
        except RenderError:
            os.environ["MUJOCO_GL"] = "disable"  # nothing can render here; training needs no renderer
    try:
        import shimmy
        from dm_control import suite  # noqa: F401  (fails here, not at the first step, on a mujoco it lacks)
    except ImportError as exc:
        raise DMCError(f"DMC tasks need the dmc extra ({EXTRA}): {exc}") from None
    except AttributeError as exc:  # dm-control compiled its bindings for another mujoco
        raise DMCError(f"dm-control {_version('dm-control')} does not work with mujoco {_version('mujoco')} "
                       f"({exc}); the dmc extra needs mujoco < 4: pip install 'mujoco<4'") from None
    gym.register_envs(shimmy)
    logging.getLogger("absl").addFilter(_model_deprecations)


def _model_deprecations(record: logging.LogRecord) -> bool:
    """Drop mujoco's notes on deprecated attributes in DMC's own model files (cheetah's
    ``settotalmass``): one per environment built, 64 a run, and nothing a user can change."""
    return "is deprecated and will be removed" not in record.getMessage()


def tasks() -> dict[str, list[str]]:
    """DMC's suite: domain -> its task names."""
    register()
    from dm_control import suite

    table: dict[str, list[str]] = {}
    for domain, task in sorted(suite.ALL_TASKS):
        table.setdefault(domain, []).append(task)
    return table


def resolve(name: str) -> str:
    """``dmc:domain-task`` or ``dm_control/domain-task-v0`` -> the registered id, checked."""
    if name.startswith(NAMESPACE):
        register()
        if name not in gym.registry:
            raise DMCError(f"unknown DMC id {name!r} (`ppo envs` lists the DMC tasks as dmc:domain-task)")
        return name
    spec = name[len(PREFIX):]
    domain, _, task = spec.partition("-")
    table = tasks()
    if domain not in table:
        raise DMCError(f"unknown DMC domain {domain!r} in {name!r}; domains: {', '.join(table)}")
    if task not in table[domain]:
        raise DMCError(f"unknown DMC task {name!r}: {domain} has: {', '.join(table[domain])}")
    return _env_id(domain, task)


def _env_id(domain: str, task: str) -> str:
    return f"{NAMESPACE}{domain}-{task}-v0"


def make(env_id: str, render_mode: str | None = None) -> gym.Env:
    """A ``dmc:`` or ``dm_control/`` task with its observation dict flattened (see the module's notes).

    The name is checked against the suite first: ``gym.make`` imports the module before a colon."""
    env_id = resolve(env_id)
    env = gym.make(env_id, render_mode=render_mode)
    dt = env.unwrapped.dt
    env.metadata = {**env.metadata, "render_fps": 1.0 / dt}  # Shimmy gives dt * 1000, which is not a rate
    return gym.wrappers.FlattenObservation(env)


def task_table() -> list[tuple[str, str]]:
    """``(dmc:domain-task, registered id)`` for every task of the suite."""
    return [(f"{PREFIX}{domain}-{task}", _env_id(domain, task))
            for domain, names in tasks().items() for task in names]


def describe_missing() -> str | None:
    """Why the DMC tasks are unavailable here, or None."""
    try:
        register()
    except DMCError as exc:
        return str(exc)
    return None


def observation_keys(env: gym.Env) -> list[Any]:
    """The keys of a DMC environment's observation dict in the order they are flattened."""
    return list(env.unwrapped.observation_space.spaces)
