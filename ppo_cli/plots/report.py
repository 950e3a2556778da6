"""Read, aggregate, draw, write: the whole of ``ppo plot`` as one library call, :func:`plot_runs`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import pandas as pd

from ppo_cli.files import atomic_write_text
from ppo_cli.plots import DEFAULT_METRICS, SUMMARY_FILE
from ppo_cli.plots.data import EVALUATION_METRIC, PlotError, align, load, valid_metrics
from ppo_cli.plots.figure import Highlight, draw_figure, save_figure
from ppo_cli.plots.stats import aggregate_curves, summarize


@dataclass
class PlotResult:
    """What :func:`plot_runs` wrote and the numbers it drew.

    ``curves``: env, run, metric, x, mean, ci_low, ci_high, seeds (the figure draws exactly these);
    ``summary``: one row per (env, run), see :func:`ppo_cli.plots.stats.summarize`.
    """

    figure_path: Path
    summary_path: Path
    metrics: tuple[str, ...]
    curves: pd.DataFrame
    summary: pd.DataFrame
    warnings: list[str] = field(default_factory=list)


def plot_runs(folders: Sequence[Path], figure_path: Path, metrics: Sequence[str] | None = None, x: str = "steps",
              smooth: int = 1, with_eval: bool = False, seed: int = 0,
              highlights: Sequence[Highlight] = ()) -> PlotResult:
    """Read every run below ``folders``, draw the figure to ``figure_path`` and write the summary beside it.

    ``metrics`` None: :data:`DEFAULT_METRICS`, leaving out those no run logged (``action_std`` of
    discrete actions). Named metrics must be :func:`valid_metrics`; one no run logged is left out
    with a warning. Raises :class:`PlotError` (with ``param``) for unknown metrics, nothing to read
    or nothing to plot. ``highlights``: shaded step ranges (see :func:`~ppo_cli.plots.figure.draw_figure`).
    """
    dataset = load(folders, with_eval=with_eval)
    warnings = list(dataset.warnings)
    if metrics is None:
        chosen = [m for m in DEFAULT_METRICS if m in dataset.metrics]
        if with_eval and EVALUATION_METRIC in dataset.metrics:  # the evaluation curve, below the training return
            chosen.insert(1 if chosen[:1] == ["episodic_return"] else 0, EVALUATION_METRIC)
    else:
        valid = valid_metrics(dataset)
        unknown = [m for m in metrics if m not in valid]
        if unknown:
            raise PlotError(f"unknown metric {', '.join(map(repr, unknown))}; valid metrics: {', '.join(valid)}",
                            param="--metrics")
        chosen = [m for m in dict.fromkeys(metrics) if m in dataset.metrics]
        warnings += [f"no run logged {m}; its row is left out" for m in dict.fromkeys(metrics)
                     if m not in dataset.metrics]
    if x == "time" and dataset.table["time_s"].isna().all():
        raise PlotError("--x time needs the time_s column of progress.csv, which none of the runs has", param="--x")
    if not chosen:
        raise PlotError("none of the metrics asked for was logged by any run", param="--metrics", warnings=warnings)
    curves = aggregate_curves(align(dataset.table, chosen, x=x, smooth=smooth), seed=seed)
    if curves.empty:
        raise PlotError(f"no values of {', '.join(chosen)} to plot against {x}", param="--metrics", warnings=warnings)
    summary = summarize(dataset.table, dataset.evals if with_eval else None, seed=seed)
    figure = draw_figure(curves, chosen, x=x, smooth=smooth, highlights=highlights)
    summary_path = Path(figure_path).with_name(SUMMARY_FILE)
    try:
        Path(figure_path).parent.mkdir(parents=True, exist_ok=True)
        save_figure(figure, figure_path)
        atomic_write_text(summary_path, summary.to_csv(index=False))
    except OSError as exc:
        raise PlotError(f"cannot write {exc.filename or figure_path}: {exc.strerror or exc}", param="--out",
                        warnings=warnings) from None
    if with_eval and dataset.evals.empty:
        warnings.append("--eval: no eval.json found next to any checkpoint; run `ppo eval RUN_FOLDER` first")
    return PlotResult(figure_path=Path(figure_path), summary_path=summary_path, metrics=tuple(chosen), curves=curves,
                      summary=summary, warnings=warnings)
