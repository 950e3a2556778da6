"""``ppo sweep``: grids of ``ppo train`` options x environments x seeds, run here or on a Ray cluster, ranked.

::

    OUT/sweeps/<name>/
        sweep.json                 the grid, environments, seeds, fixed options and the command
        .lock                      held by the ppo process running the sweep
        sweep.csv, sweep.png       the ranking and the ``ppo plot`` figure of every point
        <env folder>/<point>/      one ordinary run folder per environment and grid point
            run.json, seed_<k>/    (so ``ppo eval``, ``ppo plot``, ``ppo diagnose`` work on any part)

A point's folder name spells its values as typed (``target_kl=0.03,lr=1e-4``). The jobs (one per
environment, point and seed) run through one interface, :func:`run_jobs`: worker processes on this
machine (:func:`ppo_cli.launch.run_seeds`), or Ray tasks on an existing cluster (:mod:`ppo_cli.ray_jobs`).
Resuming skips finished jobs and continues started ones from their checkpoints. The ranking uses
``ppo plot``'s statistics: per environment, each point's final-return IQM with its 95%
stratified-bootstrap interval, and whether that interval overlaps the best point's (then the
ranking between them is not significant).
"""

from __future__ import annotations

import itertools
import json
import math
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import pandas as pd

from ppo_cli.config import Config, preset
from ppo_cli.errors import UserError
from ppo_cli.files import atomic_write_text
from ppo_cli.launch import SeedJob
from ppo_cli.layout import (LayoutError, env_folder, plan_resume, read_run, seed_folder, write_run)

SWEEPS = "sweeps"  # OUT/sweeps/<name>/
SWEEP_FILE = "sweep.json"
RANKING_FILE = "sweep.csv"
FIGURE_FILE = "sweep.png"
SWEEP_FORMAT = "ppo_cli.sweep"
DEFAULT_NAME = "sweep"


@dataclass(frozen=True)
class Axis:
    """One ``--grid NAME=V1,V2,...``: a config field and its values, each with the text it was typed as."""

    name: str
    values: tuple[Any, ...]
    texts: tuple[str, ...]


def points(axes: Sequence[Axis]) -> list[dict[str, tuple[Any, str]]]:
    """The cross product of the axes, in order: ``{field: (value, text)}`` per point."""
    return [dict(zip((a.name for a in axes), combo))
            for combo in itertools.product(*[list(zip(a.values, a.texts)) for a in axes])]


def point_name(point: dict[str, tuple[Any, str]]) -> str:
    """``target_kl=0.03,lr=1e-4``: the point's values as typed, as a folder name."""
    return ",".join(f"{name}={re.sub(r'[^A-Za-z0-9._+-]+', '_', text)}" for name, (_, text) in point.items())


@dataclass
class SweepPlan:
    """What a ``ppo sweep`` call will do: its jobs and the folder they write into."""

    sweep_dir: Path
    jobs: list[SeedJob]
    record: dict[str, Any]  # sweep.json
    runs: list[tuple[Path, Config, list[int]]] = field(default_factory=list)  # run folders to create
    finished: list[SeedJob] = field(default_factory=list)  # resume: jobs already done
    new: bool = True
    sizes: dict[str, tuple[int, int]] = field(default_factory=dict)  # env id -> (obs_dim, act_dim)

    def create(self) -> None:
        """Make the sweep's folders and records (a new sweep; the caller holds the sweep's lock)."""
        atomic_write_text(self.sweep_dir / SWEEP_FILE, json.dumps(self.record, indent=2) + "\n")
        for run_dir, config, seeds in self.runs:
            run_dir.mkdir(parents=True, exist_ok=True)
            write_run(run_dir, config, seeds)
        for job in self.jobs:
            job.run_dir.mkdir(exist_ok=True)


def job_key(env_id: str, point: str, seed: int) -> str:
    return f"{env_id} {point} seed {seed}"


def plan_sweep(envs: Sequence[str], axes: Sequence[Axis], seeds: Sequence[int], sweep_dir: Path,
               values: dict[str, Any], preset_name: str | None, given: set[str],
               build: Callable[[dict[str, Any]], Config], command: Sequence[str] = ()) -> SweepPlan:
    """Every (environment, point, seed) job of a new sweep, each config built and validated first.

    ``values``: every config field's value (defaults and fixed options); ``given``: the fields
    typed on the command line (they win over the preset); grid values win over both.
    """
    from ppo_cli.envs import EnvError, episode_horizon, probe_spaces, resolve_env_id
    from ppo_cli.monitor import check_recorders

    if not axes:
        raise UserError("a sweep needs a grid: --grid NAME=V1,V2,... (or --spec FILE with a [grid] table)", "--grid")
    grid_fields = {a.name for a in axes}
    plan = SweepPlan(sweep_dir, [], {})
    env_ids = []
    for env in envs:
        try:
            env_id = resolve_env_id(env)
            spaces = probe_spaces(env_id)
        except EnvError as exc:
            raise UserError(str(exc), "ENVS") from None
        env_ids.append(env_id)
        plan.sizes[env_id] = (spaces.obs_dim, spaces.act_dim)
        chosen = {k: v for k, v in (preset(preset_name, env_id) if preset_name else {}).items()
                  if k not in given and k not in grid_fields}
        for point in points(axes):
            name = point_name(point)
            grid_values = {k: v for k, (v, _) in point.items()}
            try:
                config = build({**values, **chosen, **grid_values, "env_id": env_id})
            except UserError as exc:
                raise UserError(f"grid point {name} on {env_id}: {exc}", exc.param, exc.usage) from None
            check_recorders(config)
            if config.stagger_resets:
                try:
                    episode_horizon(spaces.time_limit, env_id, config.action_repeat)
                except EnvError as exc:
                    raise UserError(f"grid point {name}: {exc}", "--stagger-resets") from None
            if config.update == "fused" and spaces.discrete:
                raise UserError(f"grid point {name}: --update fused computes Gaussian policies, and {env_id} "
                                f"has discrete actions", "--update")
            run_dir = sweep_dir / env_folder(env_id) / name
            plan.runs.append((run_dir, config, list(seeds)))
            for seed in seeds:
                plan.jobs.append(SeedJob(config.replace(seed=seed), seed_folder(run_dir, seed),
                                         key=job_key(env_id, name, seed)))
    plan.record = {"format": SWEEP_FORMAT, "name": sweep_dir.name, "envs": env_ids,
                   "grid": [[a.name, list(a.texts)] for a in axes], "seeds": list(seeds),
                   "preset": preset_name, "fixed": {k: values[k] for k in sorted(given) if k in values},
                   "runs": [str(run_dir.relative_to(sweep_dir)) for run_dir, _, _ in plan.runs],
                   "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": list(command or sys.argv)}
    return plan


def read_sweep(sweep_dir: Path) -> dict[str, Any]:
    """The sweep's ``sweep.json``; :class:`~ppo_cli.errors.UserError` if it is missing or damaged."""
    path = Path(sweep_dir) / SWEEP_FILE
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{sweep_dir} is not a ppo sweep: no {SWEEP_FILE} in it", "--resume") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path} is not readable JSON ({exc})", "--resume") from None
    runs = record.get("runs") if isinstance(record, dict) else None
    if not isinstance(runs, list) or record.get("format") != SWEEP_FORMAT or not all(  # runs: only from a dict
            isinstance(r, str) and ".." not in Path(r).parts and not Path(r).is_absolute() for r in runs):
        raise UserError(f"{path} is not a ppo sweep record", "--resume")
    return record


def plan_resume_sweep(sweep_dir: Path, read_checkpoint: Callable[[Path], dict[str, Any]],
                      trust_env: bool = False) -> SweepPlan:
    """The jobs of ``ppo sweep --resume``: every seed of every point, finished ones set aside."""
    from ppo_cli.envs import EnvError, require_trusted

    record = read_sweep(sweep_dir)
    plan = SweepPlan(Path(sweep_dir), [], record, new=False)
    for relative in record["runs"]:
        run_dir = Path(sweep_dir) / relative
        run = read_run(run_dir)
        if run is None:
            raise UserError(f"{run_dir} is listed in {SWEEP_FILE} but is not a run folder", "--resume")
        try:
            seeds = plan_resume(run_dir, None, read_checkpoint)
        except LayoutError as exc:
            raise UserError(str(exc), "--resume") from None
        for seed in seeds:
            try:
                require_trusted(seed.config.env_id, str(seed.seed_dir), trust_env)
            except EnvError as exc:
                raise UserError(str(exc), "--resume") from None
            job = SeedJob(seed.config, seed.seed_dir, resume=seed.action == "resume",
                          key=job_key(seed.config.env_id, run_dir.name, seed.config.seed))
            (plan.finished if seed.action == "finished" else plan.jobs).append(job)
    return plan


def run_jobs(jobs: list[SeedJob], parallel: int, on_event: Callable[[Any], None], stop: Any,
             ray_address: str | None = None) -> list[Any]:
    """Run the jobs here (``parallel`` worker processes) or, with ``ray_address``, as Ray tasks."""
    if ray_address is not None:
        from ppo_cli.ray_jobs import run_on_ray

        return run_on_ray(jobs, ray_address, on_event, stop)
    from ppo_cli.launch import run_seeds

    return run_seeds(jobs, parallel, on_event, stop)


# ----------------------------------------------------------------------------- the ranking


RANKING_COLUMNS = ["env", "point", "rank", "seeds", "iqm", "iqm_ci_low", "iqm_ci_high", "mean", "std", "by",
                   "overlaps_best"]


def rank(summary: pd.DataFrame, by: str = "final") -> pd.DataFrame:
    """Per environment, the points ranked by IQM (``by``: ``final`` training return or ``eval``), each
    marked where its 95% interval overlaps the best point's (the ranking between them is not
    significant). ``summary``: :func:`ppo_cli.plots.stats.summarize`'s table (run = point)."""
    rows = []
    for env, group in summary.groupby("env", sort=True):
        group = group.sort_values(f"{by}_iqm", ascending=False, na_position="last")
        best = group.iloc[0]
        for position, row in enumerate(group.itertuples(index=False), start=1):
            low, high = getattr(row, f"{by}_iqm_ci_low"), getattr(row, f"{by}_iqm_ci_high")
            overlap = position > 1 and _overlaps((low, high), (best[f"{by}_iqm_ci_low"], best[f"{by}_iqm_ci_high"]))
            rows.append({"env": env, "point": row.run, "rank": position,
                         "seeds": int(getattr(row, "eval_seeds" if by == "eval" else "seeds")),
                         "iqm": getattr(row, f"{by}_iqm"), "iqm_ci_low": low, "iqm_ci_high": high,
                         "mean": getattr(row, f"{by}_mean"), "std": getattr(row, f"{by}_std"), "by": by,
                         "overlaps_best": bool(overlap)})
    return pd.DataFrame(rows, columns=RANKING_COLUMNS)


def _overlaps(a: tuple[float, float], b: tuple[float, float]) -> bool:
    if any(isinstance(v, float) and math.isnan(v) for v in (*a, *b)):
        return True  # no interval (one seed): nothing tells them apart
    return a[0] <= b[1] and b[0] <= a[1]


def summarise(sweep_dir: Path, with_eval: bool = False) -> tuple[pd.DataFrame, Path, list[str]]:
    """Rank the sweep from its CSVs (and ``eval.json`` files), write ``sweep.csv`` and ``sweep.png``;
    returns the ranking, the figure's path and the reader's warnings."""
    from ppo_cli.plots.report import plot_runs

    plotted = plot_runs([sweep_dir], Path(sweep_dir) / FIGURE_FILE, with_eval=with_eval)
    ranking = rank(plotted.summary, "eval" if with_eval and "eval_iqm" in plotted.summary else "final")
    atomic_write_text(Path(sweep_dir) / RANKING_FILE, ranking.to_csv(index=False, float_format="%.6g"))
    return ranking, plotted.figure_path, plotted.warnings


def evaluate_checkpoints(sweep_dir: Path, episodes: int | None) -> int:
    """``ppo eval`` (deterministic, seed 0) of every final checkpoint whose ``eval.json`` is missing, older,
    not its own (:func:`~ppo_cli.layout.current_evaluation`) or, where ``episodes`` is given, of another
    number of episodes; returns how many were evaluated. The environments are the sweep's own (checked
    when it was planned)."""
    from ppo_cli.checkpoint import CheckpointError
    from ppo_cli.envs import EnvError
    from ppo_cli.evaluate import evaluate, load_agent, save_result
    from ppo_cli.layout import CHECKPOINT_FILE, current_evaluation, seed_dirs

    record, count = read_sweep(sweep_dir), 0
    for relative in record["runs"]:
        for seed_dir in seed_dirs(Path(sweep_dir) / relative):
            checkpoint, current = seed_dir / CHECKPOINT_FILE, current_evaluation(seed_dir)
            if not checkpoint.is_file() or (current is not None and episodes in (None, current.get("episodes"))):
                continue
            try:
                agent = load_agent(checkpoint)
                if agent.global_step < agent.config.num_iterations * agent.config.batch_size:
                    continue  # not final: the seed has not finished
                save_result(evaluate(checkpoint, agent, episodes))
            except (CheckpointError, EnvError, OSError) as exc:
                raise UserError(f"cannot evaluate {checkpoint}: {exc}", usage=False) from None
            count += 1
    return count
