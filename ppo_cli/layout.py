"""Where ``ppo`` keeps things: file names, and what a run folder holds. Imports no torch.

::

    OUT/<env folder>/<run name>/        a run folder (``ppo train`` creates one per call)
        run.json                        environment, seeds and config of the run, written first
        .lock                           held by the ppo process writing the run (ppo_cli.files)
        seed_<k>/                       one seed folder per seed
            config.json                 the seed's full config
            progress.csv                one row per iteration
            episodes.csv                one row per finished episode
            checkpoint.pt               the state after the last saved iteration
            eval.json, eval.mp4         written by ``ppo eval``: checkpoint.pt's result and video
            evaluations.csv, best.pt    with --eval-interval: evaluations during training, the best one's checkpoint
            best_eval.json, .mp4        written by ``ppo eval --best``: best.pt's (never eval.json, the final one's)
            videos/                     with --video-interval: clips during training
            events.out.tfevents.*       with --tensorboard
            error.txt                   why the seed failed, when it did
            .lock                       held by the process training the seed

A *seed folder* is one that holds ``checkpoint.pt`` or ``config.json``; a *run folder* is one that
holds ``run.json`` or seed folders named ``seed_<k>``. ``run.json`` lists every seed the run was
created with, so a resume finishes seeds that never started (runs written before it existed are
read from their ``seed_*`` folders).
"""

from __future__ import annotations

import json
import math
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ppo_cli.config import Config, ConfigError, is_int
from ppo_cli.errors import UserError
from ppo_cli.files import LOCK_FILE, atomic_write_text

RUN_FILE = "run.json"
CONFIG_FILE = "config.json"
PROGRESS_FILE = "progress.csv"
EPISODES_FILE = "episodes.csv"
CHECKPOINT_FILE = "checkpoint.pt"
EVAL_FILE = "eval.json"
EVAL_VIDEO = "eval.mp4"
ERROR_FILE = "error.txt"
EVALUATIONS_FILE = "evaluations.csv"  # --eval-interval: one row per evaluation during training
BEST_FILE = "best.pt"  # the checkpoint of the best evaluation so far
BEST_EVAL_FILE = "best_eval.json"  # ppo eval --best: best.pt's result (eval.json stays checkpoint.pt's)
BEST_EVAL_VIDEO = "best_eval.mp4"
VIDEOS_DIR = "videos"  # --video-interval: videos/step_<global_step>.mp4
__all__ = ["LOCK_FILE", "RUN_FILE", "CONFIG_FILE", "PROGRESS_FILE", "EPISODES_FILE", "CHECKPOINT_FILE", "EVAL_FILE",
           "EVAL_VIDEO", "ERROR_FILE", "EVALUATIONS_FILE", "BEST_FILE", "BEST_EVAL_FILE", "BEST_EVAL_VIDEO",
           "VIDEOS_DIR", "LayoutError", "RunRecord", "SeedPlan", "env_folder", "seed_folder", "is_seed_dir",
           "seed_dirs", "checkpoint_files", "evaluation_outputs", "read_evaluation", "current_evaluation",
           "evaluation_is_older", "run_folder_of", "read_run", "write_run", "plan_resume"]

RUN_FORMAT = "ppo_cli.run"
MAX_SEEDS = 100_000  # more seeds than any run.json ppo writes: a crafted file is refused, not obeyed


class LayoutError(UserError):
    """A folder that is not what ``ppo`` expects (not a run, a damaged ``run.json``, ...): a
    :class:`~ppo_cli.errors.UserError`, so that one a command does not catch itself is still one
    ``Error:`` line, exit 2, where a file was damaged or crafted."""


def env_folder(env_id: str) -> str:
    """The folder name of an environment id: ``tests.fake_envs:PointEnv`` -> ``tests.fake_envs_PointEnv``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", env_id)


def seed_folder(run_dir: Path, seed: int) -> Path:
    return Path(run_dir) / f"seed_{seed}"


def is_seed_dir(path: Path) -> bool:
    path = Path(path)
    return (path / CHECKPOINT_FILE).is_file() or (path / CONFIG_FILE).is_file()


def _natural(path: Path) -> tuple[int, str]:
    suffix = path.name.removeprefix("seed_")
    return (int(suffix), "") if suffix.isdigit() else (1 << 30, path.name)


@dataclass(frozen=True)
class RunRecord:
    """``run.json``: what a run was created with."""

    env_id: str
    seeds: tuple[int, ...]
    config: dict[str, Any]  # the config of the first seed; seed k differs only in ``seed``
    created: str = ""
    command: tuple[str, ...] = ()

    def seed_config(self, seed: int) -> Config:
        return Config.from_dict({**self.config, "seed": seed})

    def to_json(self) -> str:
        return json.dumps({"format": RUN_FORMAT, "env_id": self.env_id, "seeds": list(self.seeds),
                           "config": self.config, "created": self.created, "command": list(self.command)},
                          indent=2) + "\n"


def write_run(run_dir: Path, config: Config, seeds: list[int]) -> RunRecord:
    """Write ``run.json`` (atomically) for a new run of ``seeds`` with ``config`` (seed aside)."""
    record = RunRecord(config.env_id, tuple(seeds), config.replace(seed=seeds[0]).to_dict(),
                       time.strftime("%Y-%m-%dT%H:%M:%S%z"), tuple(sys.argv))
    atomic_write_text(Path(run_dir) / RUN_FILE, record.to_json())
    return record


def read_run(run_dir: Path) -> RunRecord | None:
    """The run's ``run.json``, or None where there is none; :class:`LayoutError` where it is damaged."""
    path = Path(run_dir) / RUN_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LayoutError(f"{path} is not readable JSON ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != RUN_FORMAT:
        raise LayoutError(f"{path} is not a ppo run record (no '{RUN_FORMAT}' format marker)")
    seeds, config, env_id = data.get("seeds"), data.get("config"), data.get("env_id")
    if (not isinstance(seeds, list) or not seeds or len(seeds) > MAX_SEEDS or len(set(map(str, seeds))) != len(seeds)
            or not all(is_int(s) and 0 <= s < 2**32 for s in seeds)):
        raise LayoutError(f"{path}: 'seeds' must be a list of distinct seeds (integers >= 0), "
                          f"got {str(seeds)[:80]}")
    if not isinstance(config, dict) or not isinstance(env_id, str) or config.get("env_id") != env_id:
        raise LayoutError(f"{path}: 'config' must be the run's config, for env_id {env_id!r}")
    try:
        Config.from_dict({**config, "seed": seeds[0]})
    except (ConfigError, TypeError, ValueError) as exc:
        raise LayoutError(f"{path}: its config is not valid ({exc})") from None
    command = data.get("command", [])
    return RunRecord(env_id, tuple(seeds), config, str(data.get("created", "")),
                     tuple(map(str, command)) if isinstance(command, list) else ())


def seed_dirs(folder: Path) -> list[Path]:
    """The seed folders of ``folder``: itself if it is one; else the seeds of its ``run.json``;
    else its ``seed_<k>`` folders that are seed folders, in seed order. ``[]`` if none."""
    folder = Path(folder)
    if is_seed_dir(folder):
        return [folder]
    record = read_run(folder)
    if record is not None:
        return [seed_folder(folder, seed) for seed in record.seeds]
    return sorted((p for p in folder.glob("seed_*") if p.is_dir() and is_seed_dir(p)), key=_natural)


def checkpoint_files(path: Path, best: bool = False) -> list[Path]:
    """What ``ppo eval PATH`` evaluates: PATH if it is a file; else the ``checkpoint.pt`` (with ``best``,
    ``best.pt``) of each of its seed folders (:func:`seed_dirs`), in seed order. :class:`LayoutError` if
    there is none."""
    path = Path(path)
    name = BEST_FILE if best else CHECKPOINT_FILE
    if path.is_file():
        if best:
            raise LayoutError(f"--best takes a seed or run folder (its {BEST_FILE}), not the file {path}")
        return [path]
    found = [d / name for d in seed_dirs(path) if (d / name).is_file()]
    if not found:
        hint = " (train with --eval-interval to keep one)" if best else ""
        raise LayoutError(f"{path} holds no {name} (nor seed_*/{name}){hint}")
    return found


def evaluation_outputs(checkpoint: Path) -> tuple[Path, Path]:
    """Where ``ppo eval`` writes a checkpoint's result and its default video: ``eval.json`` and
    ``eval.mp4`` beside it, ``best_eval.json`` and ``best_eval.mp4`` for a ``best.pt``, so that
    evaluating the best checkpoint never replaces the final one's evaluation, which ``ppo plot --eval``,
    ``ppo sweep`` and the benchmarks read."""
    checkpoint = Path(checkpoint)
    if checkpoint.name == BEST_FILE:
        return checkpoint.parent / BEST_EVAL_FILE, checkpoint.parent / BEST_EVAL_VIDEO
    return checkpoint.parent / EVAL_FILE, checkpoint.parent / EVAL_VIDEO


def read_evaluation(path: Path) -> dict[str, Any]:
    """The ``ppo eval`` result at ``path``, checked: a JSON object with a finite ``mean``, whose
    ``checkpoint`` (where it names one) is the file that :func:`evaluation_outputs` writes ``path``
    for. An ``eval.json`` that an earlier ``ppo eval --best`` wrote names ``best.pt``: it is not the
    final checkpoint's evaluation. :class:`LayoutError` (the reason) otherwise."""
    path = Path(path)
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise LayoutError(f"{path}: not a `ppo eval` result ({type(exc).__name__}: {exc})") from None
    mean = result.get("mean") if isinstance(result, dict) else None
    if isinstance(mean, bool) or not isinstance(mean, (int, float)) or not math.isfinite(mean):
        raise LayoutError(f"{path}: not a `ppo eval` result (its mean return is {mean!r}, not a finite number)")
    evaluated = result.get("checkpoint")
    expected = BEST_FILE if path.name == BEST_EVAL_FILE else CHECKPOINT_FILE
    if evaluated is not None and (not isinstance(evaluated, str) or Path(evaluated).name != expected):
        raise LayoutError(f"{path}: it evaluates {evaluated!r}, not the seed's {expected}; run `ppo eval` on the "
                          f"seed folder again{' with --best' if expected == BEST_FILE else ''}")
    return result


def current_evaluation(seed_dir: Path, best: bool = False) -> dict[str, Any] | None:
    """The seed's evaluation of its ``checkpoint.pt`` (``best``: of its ``best.pt``) where it is up to
    date: readable (:func:`read_evaluation`) and newer than that checkpoint; None where it is missing,
    older, or not that checkpoint's (then the checkpoint is to be evaluated again)."""
    if evaluation_is_older(seed_dir, best) is not False:
        return None
    checkpoint = Path(seed_dir) / (BEST_FILE if best else CHECKPOINT_FILE)
    try:
        return read_evaluation(evaluation_outputs(checkpoint)[0])
    except LayoutError:
        return None


def evaluation_is_older(seed_dir: Path, best: bool = False) -> bool | None:
    """Whether the seed's evaluation of its ``checkpoint.pt`` (``best``: ``best.pt``) is older than that
    checkpoint, so evaluates an earlier state of it (a resume trained on); None where either is missing."""
    checkpoint = Path(seed_dir) / (BEST_FILE if best else CHECKPOINT_FILE)
    try:
        return evaluation_outputs(checkpoint)[0].stat().st_mtime < checkpoint.stat().st_mtime
    except OSError:
        return None


def run_folder_of(folder: Path) -> Path | None:
    """The run folder that ``folder`` belongs to (itself, or the parent of a seed folder), if it has a ``run.json``."""
    folder = Path(folder)
    for candidate in (folder, folder.parent):
        if (candidate / RUN_FILE).is_file():
            return candidate
    return None


@dataclass(frozen=True)
class SeedPlan:
    """What a resume does with one seed folder: ``action`` is ``resume`` (from its checkpoint),
    ``start`` (it never saved one: train it from the beginning) or ``finished``."""

    seed_dir: Path
    config: Config
    steps_done: int
    action: str
    state: dict[str, Any] | None = None  # the loaded checkpoint, for ``resume`` and ``finished``


def plan_resume(folder: Path, total_steps: int | None,
                read_checkpoint: Callable[[Path], dict[str, Any]]) -> list[SeedPlan]:
    """The plan for ``ppo train --resume folder``: one :class:`SeedPlan` per seed of the run.

    ``total_steps`` (if given) replaces every seed's total (a run can be extended, not shortened).
    ``read_checkpoint`` loads and checks a checkpoint (``ppo_cli.checkpoint.read_checkpoint``;
    passed in so that this module stays torch-free). Raises :class:`LayoutError` naming the folder
    at fault.
    """
    folder = Path(folder)
    record = None if is_seed_dir(folder) else read_run(folder)
    dirs = seed_dirs(folder)
    if not dirs:
        raise LayoutError(f"{folder} is not a ppo run: no {RUN_FILE}, {CHECKPOINT_FILE} or {CONFIG_FILE} in it, "
                          f"nor seed folders below it")
    plans = []
    for seed_dir in dirs:
        state = None
        try:
            if (seed_dir / CHECKPOINT_FILE).is_file():
                state = read_checkpoint(seed_dir / CHECKPOINT_FILE)
                config, done = Config.from_dict(state["config"]), int(state["global_step"])
            elif (seed_dir / CONFIG_FILE).is_file():
                config, done = Config.from_json((seed_dir / CONFIG_FILE).read_text(encoding="utf-8")), 0
            else:  # listed in run.json, never started
                config, done = record.seed_config(int(seed_dir.name.removeprefix("seed_"))), 0
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, ConfigError, KeyError, TypeError) as exc:
            raise LayoutError(f"cannot resume {seed_dir}: {exc}") from None
        except ValueError as exc:  # CheckpointError is one
            raise LayoutError(f"cannot resume {seed_dir}: {exc}") from None
        if record is not None and config.env_id != record.env_id:
            raise LayoutError(f"cannot resume {seed_dir}: it trains {config.env_id!r}, its run {record.env_id!r}")
        if total_steps is not None:
            if total_steps < done:
                raise LayoutError(f"--total-steps {total_steps} is below the {done:,} steps {seed_dir} already trained")
            try:
                config = config.replace(total_steps=total_steps)
            except ConfigError as exc:
                raise LayoutError(f"--total-steps {total_steps}: {exc}") from None
        if state is None:
            action = "start"
        else:
            action = "finished" if done >= config.num_iterations * config.batch_size else "resume"
        plans.append(SeedPlan(seed_dir, config, done, action, state))
    return plans
