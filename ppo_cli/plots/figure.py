"""The learning-curve figure: rows = metrics, columns = environments, one colour per run.

Draws exactly the numbers of :func:`ppo_cli.plots.stats.aggregate_curves`: each run's ``mean`` as
a seaborn line and its ``ci_low``..``ci_high`` as a band. Uses matplotlib's Agg canvas on a
``Figure`` of its own (no pyplot, no global state, no display needed).
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib import rc_context
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter

from ppo_cli.files import atomic_write

METRIC_LABELS = {
    "episodic_return": ("episodic return", "return (raw)"),
    "evaluation": ("evaluation during training", "mean return (deterministic)"),
    "episodic_length": ("episode length", "steps"),
    "episodes": ("episodes per iteration", "episodes"),
    "policy_loss": ("policy loss", "clipped surrogate"),
    "value_loss": ("value loss", "½ (V − R)²"),
    "entropy": ("policy entropy", "nats"),
    "action_std": ("action std", "action units"),
    "approx_kl": ("approx. KL", "nats"),
    "clipfrac": ("clip fraction", "fraction of samples"),
    "explained_variance": ("explained variance", "1 − Var(R − V) / Var(R)"),
    "learning_rate": ("learning rate", "Adam step size"),
    "update_fraction": ("update fraction", "fraction of planned steps"),
    "sps": ("throughput", "steps / s"),
    "time_s": ("wall-clock time", "s"),
}
"""Metric -> (panel title, y-axis label with its unit)."""

PANEL_WIDTH, PANEL_HEIGHT = 4.2, 2.4  # inches


def metric_label(metric: str) -> tuple[str, str]:
    """(title, y label) of a metric; unknown columns are shown by name."""
    return METRIC_LABELS.get(metric, (metric.replace("_", " "), metric))


@dataclass(frozen=True)
class Highlight:
    """A shaded step range in one panel, numbered; the legend lists ``label`` under its number."""

    env: str
    metric: str
    x0: float
    x1: float
    label: str
    severity: str = "warning"


HIGHLIGHT_COLOURS = {"problem": "#d62728", "warning": "#ff7f0e", "note": "#7f7f7f"}


def draw_figure(curves: pd.DataFrame, metrics: Sequence[str], x: str = "steps", smooth: int = 1,
                highlights: Sequence[Highlight] = ()) -> Figure:
    """The figure of ``curves`` (env, run, metric, x, mean, ci_low, ci_high, seeds).

    One row per metric of ``metrics`` (in that order) and one column per environment (sorted),
    panel titles ``"<env>: <metric title>"``; in each panel one line per run (same colour in every
    panel, sorted by name) and its band; the legend, right of the panels, says how lines and bands
    were computed. ``highlights`` (``ppo diagnose --plot``) shade their steps in their panel,
    numbered, and the legend lists them.
    """
    envs = sorted(curves["env"].unique())
    runs = sorted(curves["run"].unique())
    palette = dict(zip(runs, sns.color_palette("colorblind" if len(runs) <= 10 else "husl", len(runs))))
    seeds = curves.groupby("run")["seeds"].max()
    scale, x_label = _x_scale(curves, x)

    style = {**sns.axes_style("whitegrid"), **sns.plotting_context("paper", font_scale=1.15)}
    with rc_context(style):  # fonts and styles are read when each artist is made
        legend_width = 1.8 + (3.2 if highlights else 0.0)  # findings' labels need room of their own
        figure = Figure(figsize=(PANEL_WIDTH * len(envs) + legend_width, PANEL_HEIGHT * len(metrics) + 0.9),
                        layout="constrained")
        FigureCanvasAgg(figure)
        axes = figure.subplots(len(metrics), len(envs), sharex="col", squeeze=False)
        for i, metric in enumerate(metrics):
            title, y_label = metric_label(metric)
            for j, env in enumerate(envs):
                panel = curves[(curves["env"] == env) & (curves["metric"] == metric)]
                _draw_panel(axes[i, j], panel, f"{env}: {title}", y_label, runs, palette, scale, x)
        for ax in axes[-1]:
            ax.set_xlabel(x_label)
        for number, h in enumerate(highlights, start=1):
            if h.metric in metrics and h.env in envs:
                ax = axes[list(metrics).index(h.metric), envs.index(h.env)]
                colour = HIGHLIGHT_COLOURS.get(h.severity, "#7f7f7f")
                ax.axvspan(h.x0 / scale, max(h.x1, h.x0 + 1) / scale, color=colour, alpha=0.15, linewidth=0)
                ax.text(h.x0 / scale, 0.97, f" {number}", transform=ax.get_xaxis_transform(), va="top",
                        fontsize="small", color=colour, fontweight="bold")
        handles = [Line2D([], [], color=palette[run], linewidth=2) for run in runs]
        labels = [f"{run} (n={int(seeds[run])})" for run in runs]
        how = "line: mean across seeds\nband: 95% bootstrap CI"
        if smooth > 1:
            how += f"\neach seed first smoothed\nover {smooth} grid points"
        if highlights:
            handles += [Line2D([], [], color=HIGHLIGHT_COLOURS.get(h.severity, "#7f7f7f"), linewidth=6, alpha=0.4)
                        for h in highlights]
            labels += [textwrap.fill(f"{n}: {h.label}", 44, subsequent_indent="    ")
                       for n, h in enumerate(highlights, start=1)]
        figure.legend(handles, labels, title=f"{how}\n\nrun (n = seeds)" + ("; shaded: findings" if highlights else ""),
                      loc="outside right upper", frameon=False, alignment="left")
    return figure


def _draw_panel(ax: Axes, panel: pd.DataFrame, title: str, y_label: str, runs: Sequence[str],
                palette: dict[str, tuple[float, float, float]], scale: float, x: str) -> None:
    """One panel: per run, the mean line (seaborn) and its band, in the run's colour."""
    ax.set_title(title, fontsize="medium")
    ax.set_ylabel(y_label)
    if panel.empty:
        ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", va="center", color="0.5")
    for run in runs:
        line = panel[panel["run"] == run].sort_values("x")
        if line.empty:
            continue
        xs = line["x"].to_numpy(dtype=float) / scale
        sns.lineplot(x=xs, y=line["mean"].to_numpy(dtype=float), color=palette[run], ax=ax, estimator=None,
                     errorbar=None, sort=False, linewidth=1.6, label=run, legend=False)
        ax.fill_between(xs, line["ci_low"].to_numpy(dtype=float), line["ci_high"].to_numpy(dtype=float),
                        color=palette[run], alpha=0.2, linewidth=0)
    if x == "steps":
        ax.xaxis.set_major_formatter(FuncFormatter(_steps_label))


def save_figure(figure: Figure, path: Path) -> Path:
    """Write ``figure`` to ``path`` atomically (the format from its suffix: .png, .pdf or .svg): a kill
    or a full disk leaves the previous figure, never half of one."""
    fmt = Path(path).suffix.lower().removeprefix(".")
    atomic_write(path, lambda f: figure.savefig(f, format=fmt, dpi=150 if fmt == "png" else None))
    return Path(path)


def _x_scale(curves: pd.DataFrame, x: str) -> tuple[float, str]:
    if x == "steps":
        return 1.0, "environment steps"
    longest = float(np.nanmax(curves["x"].to_numpy(dtype=float))) if len(curves) else 0.0
    if longest > 2 * 3600:
        return 3600.0, "wall-clock time (h)"
    if longest > 2 * 60:
        return 60.0, "wall-clock time (min)"
    return 1.0, "wall-clock time (s)"


def _steps_label(value: float, _pos: int) -> str:
    if abs(value) >= 1e6:
        return f"{value / 1e6:g}M"
    if abs(value) >= 1e3:
        return f"{value / 1e3:g}k"
    return f"{value:g}"
