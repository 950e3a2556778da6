"""What a ``ppo train`` call will do, decided before anything is written: a new run or a resume.

:func:`plan_new_run` and :func:`plan_resume_run` check everything that can be checked up front
(the environment builds and fits, the names, the disk, no other process holds the run) and return
a :class:`RunPlan`; :meth:`RunPlan.open` then creates the run folder (with the stop signals held
back, so a Ctrl-C cannot leave half a run) and holds its lock while the seeds train. Problems are
:class:`PlanError`, naming the command-line parameter at fault, for the CLI to print.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from ppo_cli.config import Config, preset
from ppo_cli.errors import UserError
from ppo_cli.files import FolderBusy, FolderLock, check_writable
from ppo_cli.launch import SeedJob
from ppo_cli.layout import (LayoutError, env_folder, is_seed_dir, plan_resume, run_folder_of, seed_dirs,
                            seed_folder, write_run)
from ppo_cli.signals import signals_deferred

DEFAULT_RUN_NAME = "default"


class PlanError(UserError):
    """Why a ``ppo train`` call cannot go ahead (see :class:`~ppo_cli.errors.UserError`)."""


@dataclass
class RunPlan:
    """The seed jobs of a ``ppo train`` call and the run folder they write into."""

    jobs: list[SeedJob]
    run_dir: Path
    finished: list[tuple[Path, int]] = field(default_factory=list)  # (seed folder, steps) with nothing to do
    create: Callable[[], Path] | None = None  # a new run: makes the run folder and returns it
    record: Callable[[Path], object] | None = None  # a new run: writes its run.json, once it is locked
    lock_run: bool = True

    @contextlib.contextmanager
    def open(self) -> Iterator[Path]:
        """Create the run folder and seed folders and hold the run's lock until the block ends."""
        with contextlib.ExitStack() as held:
            with signals_deferred():
                if self.create is not None:
                    self.run_dir = self.create()
                    self.jobs = [dataclasses.replace(job, run_dir=self.run_dir / job.run_dir.name) for job in self.jobs]
                if self.lock_run:
                    held.enter_context(locked(self.run_dir))
                try:
                    if self.record is not None:
                        self.record(self.run_dir)
                    for job in self.jobs:
                        job.run_dir.mkdir(exist_ok=True)  # new seeds, and seeds of a run.json that never started
                except OSError as exc:
                    raise PlanError(f"cannot write to {self.run_dir}: {exc.strerror or exc}", usage=False) from None
            yield self.run_dir


@contextlib.contextmanager
def locked(folder: Path) -> Iterator[None]:
    """Hold ``folder``'s :class:`~ppo_cli.files.FolderLock` for the block; a :class:`PlanError` if another
    process holds it or the folder cannot be written."""
    try:
        lock = FolderLock(folder).acquire()
    except FolderBusy as exc:
        raise PlanError(str(exc), usage=False) from None
    except OSError as exc:
        raise PlanError(f"cannot write to {folder}: {exc.strerror or exc}", usage=False) from None
    try:
        yield
    finally:
        lock.release()


def plan_new_run(env: str, num_seeds: int, out_dir: Path, run_name: str | None, values: dict[str, Any],
                 preset_name: str | None = None, given: set[str] = frozenset(),
                 build: Callable[[dict[str, Any]], Config] = lambda values: Config(**values)) -> RunPlan:
    """Plan a new run of ``num_seeds`` seeds on ``env`` with the field ``values``.

    ``preset_name``'s values for the environment replace the defaults, except for the fields in
    ``given`` (those typed on the command line). ``build`` makes the config (the CLI's turns a
    ``ConfigError`` into a message naming the flags).
    """
    from ppo_cli.checkpoint import required_bytes
    from ppo_cli.envs import EnvError, check_backend, episode_horizon, probe_spaces, resolve_env_id
    from ppo_cli.monitor import check_recorders

    try:
        env_id = resolve_env_id(env)
        spaces = probe_spaces(env_id)
    except EnvError as exc:
        raise PlanError(str(exc), "ENV") from None
    try:
        check_backend(env_id, values["backend"])
    except EnvError as exc:
        raise PlanError(str(exc), "--backend") from None
    if preset_name is not None:
        values = {**values, **{k: v for k, v in preset(preset_name, env_id).items() if k not in given}}
    config = build({"env_id": env_id, **values})
    check_recorders(config)
    if config.stagger_resets:
        try:
            episode_horizon(spaces.time_limit, env_id, config.action_repeat)
        except EnvError as exc:
            raise PlanError(str(exc), "--stagger-resets") from None
    if config.update == "fused" and spaces.discrete:
        raise PlanError(f"--update fused computes Gaussian policies, and {env_id} has discrete actions; use "
                        f"--update autograd (or auto)", "--update")
    env_dir = out_dir / env_folder(env_id)
    check_run_name(env_dir, run_name)
    check_free_space(out_dir, num_seeds * required_bytes(config, spaces.obs_dim, spaces.act_dim), num_seeds)
    configs = [config.replace(seed=config.seed + k) for k in range(num_seeds)]
    return RunPlan([SeedJob(c, seed_folder(env_dir, c.seed)) for c in configs], env_dir,
                   create=lambda: make_run_dir(out_dir, env_dir, run_name),
                   record=lambda run_dir: write_run(run_dir, config, [c.seed for c in configs]))


def plan_resume_run(folder: Path, total_steps: int | None, trust_env: bool) -> RunPlan:
    """Plan ``ppo train --resume folder``: a job per seed of the run (or the one seed folder) with steps
    left, ``total_steps`` (if given) extending every seed."""
    from ppo_cli.checkpoint import read_checkpoint, required_bytes
    from ppo_cli.envs import EnvError, probe_spaces, require_trusted
    from ppo_cli.monitor import check_recorders

    try:
        check_not_in_use(folder)  # reads run.json, which may be damaged
        seeds = plan_resume(folder, total_steps, lambda p: read_checkpoint(p, resume=True))
    except LayoutError as exc:
        raise PlanError(str(exc), "--total-steps" if str(exc).startswith("--total-steps") else "--resume") from None
    plan = RunPlan([], folder)
    needed = 0
    for seed in seeds:
        if seed.action == "finished":
            plan.finished.append((seed.seed_dir, seed.steps_done))
            continue
        try:
            require_trusted(seed.config.env_id, str(seed.seed_dir), trust_env)
            spaces = probe_spaces(seed.config.env_id)
        except EnvError as exc:
            raise PlanError(f"cannot resume {seed.seed_dir}: {exc}", "--resume") from None
        saved = (seed.state or {}).get("spaces")
        if saved and (saved["obs_dim"], saved["act_dim"], saved["discrete"]) != (spaces.obs_dim, spaces.act_dim,
                                                                                   spaces.discrete):
            raise PlanError(f"cannot resume {seed.seed_dir}: {seed.config.env_id} has {spaces.obs_dim} observations "
                            f"and {spaces.act_dim} actions here, the checkpoint {saved['obs_dim']} and "
                            f"{saved['act_dim']}", "--resume")
        check_recorders(seed.config)
        needed += required_bytes(seed.config, spaces.obs_dim, spaces.act_dim)
        plan.jobs.append(SeedJob(seed.config, seed.seed_dir, resume=seed.action == "resume"))
    check_free_space(folder, needed, len(plan.jobs))
    run_dir = folder if not is_seed_dir(folder) else run_folder_of(folder)
    plan.run_dir, plan.lock_run = run_dir or folder, run_dir is not None
    return plan


def check_not_in_use(folder: Path) -> None:
    """Refuse a run (or seed) folder that another process is writing, or that cannot be written."""
    run_dir = folder if not is_seed_dir(folder) else run_folder_of(folder)
    for path in ([run_dir] if run_dir is not None else []) + [d for d in seed_dirs(folder) if d.is_dir()]:
        try:
            with FolderLock(path):
                pass
        except FolderBusy as exc:
            raise PlanError(str(exc), usage=False) from None
        except OSError as exc:
            raise PlanError(f"cannot write to {path}: {exc.strerror or exc}", "--resume") from None


def check_free_space(folder: Path, needed: int, seeds: int) -> None:
    existing = folder.resolve()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    free = shutil.disk_usage(existing).free
    if free < needed:
        raise PlanError(f"not enough free space in {existing} for {seeds} seed(s): need about "
                        f"{needed / 2**20:.1f} MiB for checkpoints and logs, {free / 2**20:.1f} MiB free")


def check_run_name(env_dir: Path, run_name: str | None) -> None:
    """Refuse a ``--run-name`` that cannot be a new folder under ``env_dir``, before anything is created."""
    if run_name is None:
        return
    if not run_name or "/" in run_name or "\0" in run_name or run_name in {".", ".."}:
        raise PlanError(f"{run_name!r} is not a folder name", "--run-name")
    existing = env_dir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        limit = os.pathconf(existing, "PC_NAME_MAX")
    except (OSError, ValueError):
        limit = 255
    if len(os.fsencode(run_name)) > limit:
        raise PlanError(f"{run_name[:40]}... is {len(os.fsencode(run_name))} bytes long; folder names here can "
                        f"have at most {limit}", "--run-name")
    if (env_dir / run_name).exists():
        raise PlanError(f"--run-name {run_name}: {env_dir / run_name} already exists; choose another name or "
                        f"remove it")


def make_run_dir(out_dir: Path, env_dir: Path, run_name: str | None, default: str = DEFAULT_RUN_NAME) -> Path:
    """Create ``OUT/<env folder>/<run name>`` without ever reusing an existing folder (``mkdir`` either
    creates it or fails, so two processes never get the same one; without ``run_name``, ``default``,
    ``default-2``, ...); on failure, remove the folders this call created."""
    created = [p for p in (env_dir, *env_dir.parents) if not p.exists()]
    try:
        try:
            env_dir.mkdir(parents=True, exist_ok=True)
            check_writable(env_dir)
        except OSError as exc:
            raise PlanError(f"cannot write to {out_dir}: {exc.strerror or exc}", "--out") from None
        names = [run_name] if run_name is not None else [default] + [f"{default}-{k}" for k in range(2, 10_000)]
        for name in names:
            try:
                (env_dir / name).mkdir()
                return env_dir / name
            except FileExistsError:
                if run_name is not None:
                    raise PlanError(f"--run-name {run_name}: {env_dir / run_name} already exists; choose another "
                                    f"name or remove it") from None
            except OSError as exc:
                raise PlanError(f"cannot create {env_dir / name}: {exc.strerror or exc}", "--run-name") from None
        raise PlanError(f"no free run name under {env_dir}; pass --run-name")
    except PlanError:
        for folder in created:  # innermost first; only if still empty
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
