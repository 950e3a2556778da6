"""Find the CSVs ``ppo train`` writes, read them into one long table, put seeds on a common grid.

Layout read (see ``ppo_cli/diagnostics.py``): ``<root>/<env id>/<run name>/seed_<k>/`` holding
``progress.csv`` (one row per iteration), ``episodes.csv`` (one row per finished episode),
``config.json``, with ``--eval-interval`` ``evaluations.csv`` (read as the metric ``evaluation``) and,
after ``ppo eval``, ``eval.json``. A seed folder is identified by

* env: ``env_id`` of its ``config.json``, else the name of the folder two levels up;
* run: the name of the folder one level up (the run folder);
* seed: ``seed`` of its ``config.json``, else ``<k>`` of its ``seed_<k>`` name, else its name.

Seeds are labelled as strings. When the same (env, run, seed) is found below two of the given
folders, the runs are told apart as ``<given folder name>/<run>``.

Reads CSV and JSON files only: never imports the trainer or torch.
"""

from __future__ import annotations

import io
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from ppo_cli.diagnostics import PROGRESS_COLUMNS
from ppo_cli.errors import UserError
from ppo_cli.layout import (CHECKPOINT_FILE, CONFIG_FILE, EPISODES_FILE, EVAL_FILE, EVALUATIONS_FILE, PROGRESS_FILE,
                             LayoutError, evaluation_is_older, read_evaluation)
from ppo_cli.plots import X_AXES


X_COLUMNS = {"steps": "step", "time": "time_s"}
"""``--x`` choice (:data:`ppo_cli.plots.X_AXES`) -> column of the long table used as the x axis."""

MAX_GRID_POINTS = 500
"""Largest common grid; beyond it the grid is this many evenly spaced points."""

EVALUATION_METRIC = "evaluation"
"""The mean return of each evaluation during training (``evaluations.csv``), as a metric of the long table."""

NOT_METRICS = ("global_step", "iteration")
"""Numeric ``progress.csv`` columns that are not plotted as metrics."""

TABLE_COLUMNS = ("env", "run", "seed", "step", "time_s", "metric", "value")


class PlotError(UserError):
    """A user mistake in what is plotted: ``param`` names the CLI parameter at fault.

    ``warnings`` are the files skipped before the error was found (shown before the error).
    """

    def __init__(self, message: str, param: str | None = None, warnings: Sequence[str] = ()) -> None:
        super().__init__(message, param)
        self.warnings = list(warnings)


@dataclass
class Dataset:
    """Everything read below the given folders.

    ``table``: the long table, one row per (env, run, seed, logged step, metric), columns
    :data:`TABLE_COLUMNS`; ``step`` is the ``global_step``, ``time_s`` the seconds since the
    seed started (missing for rows from ``episodes.csv``), missing values are dropped.
    ``evals``: one row per ``eval.json`` read (env, run, seed, global_step, mean, episodes).
    ``metrics``: every metric name present in ``table``.
    ``warnings``: one line per file skipped, naming it and why.
    ``seed_folders``: one row per seed folder read (env, run, seed, path).
    """

    table: pd.DataFrame
    evals: pd.DataFrame
    metrics: tuple[str, ...]
    warnings: list[str] = field(default_factory=list)
    seed_folders: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=["env", "run", "seed", "path"]))


@dataclass
class _SeedDir:
    path: Path
    root: Path
    env: str
    run: str
    seed: str


def valid_metrics(dataset: Dataset | None = None) -> tuple[str, ...]:
    """Metric names accepted by ``--metrics``: the numeric ``progress.csv`` columns (and any extra found)."""
    known = [c for c in PROGRESS_COLUMNS if c not in NOT_METRICS]
    extra = sorted(set(dataset.metrics) - set(known)) if dataset is not None else []
    return tuple(known + extra)


def find_seed_dirs(folders: Sequence[Path]) -> list[tuple[Path, Path]]:
    """``(seed folder, given folder)`` for every folder below ``folders`` holding a progress or episodes CSV.

    Raises :class:`PlotError` naming the folders searched when there is none.
    """
    found: dict[Path, tuple[Path, Path]] = {}
    for root in folders:
        root = Path(root)
        if not root.is_dir():
            raise PlotError(f"{root} is not a folder", param="FOLDER...")
        for name in (PROGRESS_FILE, EPISODES_FILE):
            for csv_path in sorted(root.rglob(name)):
                if csv_path.is_file():
                    found.setdefault(csv_path.parent.resolve(), (csv_path.parent, root))
    if not found:
        where = ", ".join(str(f) for f in folders)
        raise PlotError(f"no {PROGRESS_FILE} or {EPISODES_FILE} found below {where} (searched every sub-folder); "
                        f"write some with `ppo train ENV --out FOLDER`", param="FOLDER...")
    return sorted(found.values(), key=lambda item: _natural_key(str(item[0])))


def load(folders: Sequence[Path], with_eval: bool = False) -> Dataset:
    """Read every seed folder below ``folders`` into a :class:`Dataset`.

    A CSV that cannot be read (not CSV, empty, no rows, a non-numeric cell, a missing
    ``global_step`` column) is skipped with a warning naming it; the others are read.
    The episodic return of a seed without a usable ``progress.csv`` comes from its ``episodes.csv``.
    Raises :class:`PlotError` when nothing usable is found.
    """
    warnings: list[str] = []
    seed_dirs = _identify(find_seed_dirs(folders), warnings)
    frames: list[pd.DataFrame] = []
    eval_rows: list[dict[str, object]] = []
    for sd in seed_dirs:
        progress = _read_csv(sd.path / PROGRESS_FILE, ("global_step",), warnings)
        episodes = _read_csv(sd.path / EPISODES_FILE, ("global_step", "return"), warnings)
        if progress is not None:
            frames.append(_progress_rows(progress, sd))
        elif episodes is not None:
            frames.append(pd.DataFrame({"env": sd.env, "run": sd.run, "seed": sd.seed,
                                        "step": episodes["global_step"], "time_s": math.nan,
                                        "metric": "episodic_return", "value": episodes["return"]}))
        evaluations = _read_csv(sd.path / EVALUATIONS_FILE, ("global_step", "mean"), warnings)
        if evaluations is not None:  # --eval-interval: the evaluation curve, as the metric "evaluation"
            frames.append(pd.DataFrame({"env": sd.env, "run": sd.run, "seed": sd.seed,
                                        "step": evaluations["global_step"],
                                        "time_s": evaluations.get("time_s", math.nan),
                                        "metric": EVALUATION_METRIC, "value": evaluations["mean"]}))
        if with_eval and (sd.path / EVAL_FILE).is_file():
            row = _read_eval(sd.path / EVAL_FILE, warnings)
            if row is not None:
                eval_rows.append({"env": sd.env, "run": sd.run, "seed": sd.seed, **row})
                _warn_if_older(sd.path, row, warnings)
    frames = [f for f in frames if not f.empty]
    if not frames:
        where = ", ".join(str(f) for f in folders)
        raise PlotError(f"no readable {PROGRESS_FILE} or {EPISODES_FILE} below {where}; every one found was skipped",
                        param="FOLDER...", warnings=warnings)
    table = pd.concat(frames, ignore_index=True)
    table = table.dropna(subset=["step", "value"]).reset_index(drop=True)[list(TABLE_COLUMNS)]
    evals = pd.DataFrame(eval_rows, columns=["env", "run", "seed", "global_step", "mean", "episodes"])
    metrics = tuple(dict.fromkeys(table["metric"]))
    folders = pd.DataFrame([{"env": sd.env, "run": sd.run, "seed": sd.seed, "path": str(sd.path)} for sd in seed_dirs],
                           columns=["env", "run", "seed", "path"])
    return Dataset(table=table, evals=evals, metrics=metrics, warnings=warnings, seed_folders=folders)


def align(table: pd.DataFrame, metrics: Sequence[str], x: str = "steps", smooth: int = 1,
          max_points: int = MAX_GRID_POINTS) -> pd.DataFrame:
    """Put every seed of a run on the run's common grid; columns env, run, metric, seed, x, value.

    Grid of an (env, run): the sorted union of the x values its seeds logged (any metric), or
    ``max_points`` evenly spaced points from the smallest to the largest when the union is larger.
    Each seed's values of a metric are linearly interpolated onto the grid within that seed's own
    first..last logged x of that metric and never extrapolated: a grid point a seed did not reach has
    no value for it (no row). Gaps inside the range (iterations where no episode ended) are bridged
    by the interpolation. Several values at one x are averaged first.
    ``smooth`` > 1: a trailing rolling mean over the last ``smooth`` grid points of each seed (fewer
    at its start), taken after alignment and before any averaging across seeds.
    """
    if x not in X_AXES:
        raise PlotError(f"x axis {x!r} is not one of {', '.join(X_AXES)}", param="--x")
    xcol = X_COLUMNS[x]
    out: list[pd.DataFrame] = []
    for (env, run), group in table.dropna(subset=[xcol]).groupby(["env", "run"], sort=True):
        grid = common_grid(group[xcol].to_numpy(dtype=float), max_points)
        for (metric, seed), rows in group[group["metric"].isin(metrics)].groupby(["metric", "seed"], sort=True):
            values = interpolate(grid, rows[xcol].to_numpy(dtype=float), rows["value"].to_numpy(dtype=float))
            if smooth > 1:
                values = rolling_mean(values, smooth)
            keep = ~np.isnan(values)
            out.append(pd.DataFrame({"env": env, "run": run, "metric": metric, "seed": seed,
                                     "x": grid[keep], "value": values[keep]}))
    columns = ["env", "run", "metric", "seed", "x", "value"]
    return pd.concat(out, ignore_index=True)[columns] if out else pd.DataFrame(columns=columns)


def common_grid(xs: np.ndarray, max_points: int = MAX_GRID_POINTS) -> np.ndarray:
    """Sorted unique ``xs``, or ``max_points`` evenly spaced points over their range when there are more."""
    grid = np.unique(xs[~np.isnan(xs)])
    if len(grid) > max_points:
        grid = np.linspace(grid[0], grid[-1], max_points)
    return grid


def interpolate(grid: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Linear interpolation of ``(xs, ys)`` at ``grid``; NaN outside ``[min xs, max xs]``. Shapes ``(n,)``."""
    ok = ~(np.isnan(xs) | np.isnan(ys))
    if not ok.any():
        return np.full(len(grid), math.nan)
    series = pd.Series(ys[ok]).groupby(xs[ok]).mean()  # sorted by x, duplicates averaged
    px, py = series.index.to_numpy(dtype=float), series.to_numpy(dtype=float)
    values = np.interp(grid, px, py)
    values[(grid < px[0]) | (grid > px[-1])] = math.nan
    return values


def rolling_mean(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over ``window`` points, ignoring NaN; NaN where ``values`` is NaN. Shape ``(n,)``."""
    smoothed = pd.Series(values).rolling(window, min_periods=1).mean().to_numpy(copy=True)
    smoothed[np.isnan(values)] = math.nan
    return smoothed


def _identify(found: Iterable[tuple[Path, Path]], warnings: list[str]) -> list[_SeedDir]:
    seed_dirs = []
    for path, root in found:
        config = _read_config(path / CONFIG_FILE, warnings)
        env = config.get("env_id") if isinstance(config.get("env_id"), str) else path.parent.parent.name
        match = re.fullmatch(r"seed_(\d+)", path.name)
        seed = config.get("seed")
        if isinstance(seed, bool) or not isinstance(seed, int):
            seed = int(match.group(1)) if match else path.name
        seed_dirs.append(_SeedDir(path=path, root=root, env=env or "?", run=path.parent.name or "?", seed=str(seed)))
    # The same (env, run, seed) below two given folders: tell the runs apart by the folder name.
    roots_of: dict[tuple[str, str, str], set[Path]] = {}
    for sd in seed_dirs:
        roots_of.setdefault((sd.env, sd.run, sd.seed), set()).add(sd.root)
    clashing = {(env, run) for (env, run, _), roots in roots_of.items() if len(roots) > 1}
    for sd in seed_dirs:
        if (sd.env, sd.run) in clashing:
            sd.run = f"{sd.root.resolve().name}/{sd.run}"
    unique: dict[tuple[str, str, str], _SeedDir] = {}
    for sd in seed_dirs:
        first = unique.setdefault((sd.env, sd.run, sd.seed), sd)
        if first is not sd:
            warnings.append(f"skipped {sd.path}: same env {sd.env}, run {sd.run} and seed {sd.seed} as {first.path}")
    return list(unique.values())


def _read_config(path: Path, warnings: list[str]) -> dict[str, object]:
    if not path.is_file():
        return {}
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        warnings.append(f"ignored {path}: not readable JSON ({exc}); env and seed taken from the folder names")
        return {}
    return config if isinstance(config, dict) else {}


def _read_csv(path: Path, required: tuple[str, ...], warnings: list[str]) -> pd.DataFrame | None:
    """The CSV with every column numeric, or None (and a warning) when it cannot be used.

    An unfinished last line (no line end: a row being written, or cut off by a kill) is ignored.
    """
    if not path.is_file():
        return None
    reason = None
    try:
        text = path.read_text(encoding="utf-8")
        if "\n" in text and not text.endswith("\n"):
            text = text[:text.rindex("\n") + 1]  # a row still being written (or cut off by a kill)
        frame = pd.read_csv(io.StringIO(text))
    except pd.errors.EmptyDataError:
        reason = "empty file"
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
        reason = f"not a valid CSV ({str(exc).strip().splitlines()[-1]})"
    except OSError as exc:
        reason = f"cannot be read ({exc.strerror or exc})"
    else:
        missing = [c for c in required if c not in frame.columns]
        if missing:
            reason = f"no {', '.join(missing)} column"
        elif frame.empty:
            reason = "no rows"
        else:
            reason = _non_numeric(frame)
    if reason is not None:
        warnings.append(f"skipped {path}: {reason}")
        return None
    return frame.apply(pd.to_numeric, errors="coerce")


def _non_numeric(frame: pd.DataFrame) -> str | None:
    """Describe the first cell that is present but not a number, or None."""
    for column in frame.columns:
        numeric = pd.to_numeric(frame[column], errors="coerce")
        bad = numeric.isna() & frame[column].notna()
        if bad.any():
            row = int(np.argmax(bad.to_numpy()))
            return f"line {row + 2}, column {column}: {frame[column].iloc[row]!r} is not a number"
    return None


def _progress_rows(progress: pd.DataFrame, sd: _SeedDir) -> pd.DataFrame:
    metrics = [c for c in progress.columns if c not in NOT_METRICS]
    time_s = progress["time_s"] if "time_s" in progress.columns else math.nan
    wide = progress.assign(step=progress["global_step"], _time=time_s)
    long = wide.melt(id_vars=["step", "_time"], value_vars=metrics, var_name="metric", value_name="value")
    return long.rename(columns={"_time": "time_s"}).assign(env=sd.env, run=sd.run, seed=sd.seed)


def _read_eval(path: Path, warnings: list[str]) -> dict[str, object] | None:
    try:
        result = read_evaluation(path)
        row = {"global_step": int(result.get("global_step", -1)), "mean": float(result["mean"]),
               "episodes": int(result.get("episodes", len(result.get("returns", [])) or 0))}
    except LayoutError as exc:
        warnings.append(f"skipped {exc}")
        return None
    except (TypeError, ValueError, OverflowError) as exc:  # OverflowError: int() of an infinite step
        warnings.append(f"skipped {path}: not a `ppo eval` result ({type(exc).__name__}: {exc})")
        return None
    return row


def _warn_if_older(seed_dir: Path, row: dict[str, object], warnings: list[str]) -> None:
    """An ``eval.json`` older than the seed's checkpoint evaluates an earlier state of it (the run was
    resumed and trained on): it is kept (a copy can reorder the files' times), and said."""
    if evaluation_is_older(seed_dir):
        warnings.append(f"{seed_dir / EVAL_FILE} is older than {CHECKPOINT_FILE}: it evaluates step "
                        f"{row['global_step']}, and the seed trained on since; run `ppo eval` on it again")


def _natural_key(text: str) -> list[object]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]
