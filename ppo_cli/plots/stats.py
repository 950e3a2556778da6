"""Statistics across seeds: mean curves with bootstrap bands, final returns, IQM with a stratified bootstrap.

The aggregate for few-seed results is the one rliable recommends (Agarwal et al., 2021, "Deep RL
at the Edge of the Statistical Precipice"): the interquartile mean (IQM, ``trim_mean(x, 0.25)``)
with a 95% percentile interval from a stratified bootstrap (seeds resampled with replacement
within each stratum, here each (env, run)). Every bootstrap is seeded: the same inputs give the
same intervals. With one seed there is no interval (NaN); with very few seeds a percentile
bootstrap is too narrow, which is why the number of seeds is always reported beside it.
"""

from __future__ import annotations

import math
import zlib
from typing import Callable, Sequence

import numpy as np
import pandas as pd

BOOTSTRAP_REPS = 2000
CONFIDENCE = 0.95
FINAL_FRACTION = 0.1
"""Final return: the last 10% of a seed's steps."""


def trim_mean(values: np.ndarray, proportion: float = 0.25, axis: int = -1) -> np.ndarray | float:
    """Mean after cutting ``int(proportion * n)`` of the ``n`` sorted values from each end.

    The definition of ``scipy.stats.trim_mean`` (which rliable's IQM calls with 0.25); with fewer
    than 4 values nothing is cut (the plain mean).
    """
    values = np.sort(np.asarray(values, dtype=float), axis=axis)
    n = values.shape[axis]
    cut = int(proportion * n)
    return np.take(values, np.arange(cut, n - cut), axis=axis).mean(axis=axis)


def iqm(values: np.ndarray, axis: int = -1) -> np.ndarray | float:
    """Interquartile mean: the mean of the middle 50% (``trim_mean(values, 0.25)``)."""
    return trim_mean(values, 0.25, axis=axis)


def stratified_bootstrap_ci(strata: Sequence[np.ndarray], statistic: Callable[..., np.ndarray] = iqm,
                            reps: int = BOOTSTRAP_REPS, confidence: float = CONFIDENCE,
                            rng: np.random.Generator | None = None) -> tuple[float, float]:
    """Percentile interval of ``statistic`` over ``reps`` stratified bootstrap resamples.

    Each resample draws ``len(s)`` values with replacement from every stratum ``s`` and applies
    ``statistic(resample, axis=-1)`` to their concatenation. One stratum is a plain bootstrap.
    ``(nan, nan)`` when there are fewer than 2 values in all.
    """
    strata = [np.asarray(s, dtype=float) for s in strata if len(s)]
    if sum(len(s) for s in strata) < 2:
        return math.nan, math.nan
    rng = rng if rng is not None else np.random.default_rng(0)
    resamples = np.concatenate([s[rng.integers(0, len(s), size=(reps, len(s)))] for s in strata], axis=1)
    stats = statistic(resamples, axis=-1)
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(stats, [tail, 100 - tail])
    return float(low), float(high)


def group_rng(seed: int, *labels: str) -> np.random.Generator:
    """A generator for one group, fixed by ``seed`` and the group's labels (not by the other groups)."""
    return np.random.default_rng([seed, *(zlib.crc32(label.encode()) for label in labels)])


def aggregate_curves(aligned: pd.DataFrame, reps: int = BOOTSTRAP_REPS, confidence: float = CONFIDENCE,
                     seed: int = 0) -> pd.DataFrame:
    """Mean across seeds at every grid point, with a bootstrap band.

    ``aligned``: the output of :func:`ppo_cli.plots.data.align` (env, run, metric, seed, x, value).
    Returns one row per (env, run, metric, x): ``mean`` over the seeds that have a value there,
    ``seeds`` (how many), and ``ci_low``/``ci_high``: the percentile interval of the mean over
    ``reps`` resamples of those seeds with replacement (NaN where only one seed has a value).
    Grid points with the same set of seeds share their resamples.
    """
    rows: list[pd.DataFrame] = []
    for (env, run, metric), group in aligned.groupby(["env", "run", "metric"], sort=True):
        wide = group.pivot_table(index="seed", columns="x", values="value", aggfunc="mean")
        values = wide.to_numpy(dtype=float)  # (seeds, grid)
        present = ~np.isnan(values)
        counts = present.sum(axis=0)
        means = np.nanmean(values, axis=0)
        low = np.full(values.shape[1], math.nan)
        high = np.full(values.shape[1], math.nan)
        rng = group_rng(seed, env, run, metric)
        masks, which = np.unique(present.T, axis=0, return_inverse=True)
        for k, mask in enumerate(masks):
            if mask.sum() < 2:
                continue
            cols = np.flatnonzero(which.ravel() == k)
            block = values[np.ix_(mask, cols)]  # (n, g)
            draws = rng.integers(0, block.shape[0], size=(reps, block.shape[0]))
            boot = block[draws].mean(axis=1)  # (reps, g)
            tail = 100 * (1 - confidence) / 2
            low[cols], high[cols] = np.percentile(boot, [tail, 100 - tail], axis=0)
        rows.append(pd.DataFrame({"env": env, "run": run, "metric": metric, "x": wide.columns.to_numpy(dtype=float),
                                  "mean": means, "ci_low": low, "ci_high": high, "seeds": counts}))
    columns = ["env", "run", "metric", "x", "mean", "ci_low", "ci_high", "seeds"]
    return pd.concat(rows, ignore_index=True)[columns] if rows else pd.DataFrame(columns=columns)


def final_return(steps: np.ndarray, returns: np.ndarray, last_step: float,
                 fraction: float = FINAL_FRACTION) -> float:
    """Mean of the returns logged at ``global_step >= (1 - fraction) * last_step``.

    ``last_step`` is the seed's last logged ``global_step``. When no return was logged in that
    window (no episode ended), the last return logged before it; NaN when there is none at all.
    """
    steps, returns = np.asarray(steps, dtype=float), np.asarray(returns, dtype=float)
    ok = ~(np.isnan(steps) | np.isnan(returns))
    steps, returns = steps[ok], returns[ok]
    if not len(returns):
        return math.nan
    window = steps >= (1 - fraction) * last_step
    if window.any():
        return float(returns[window].mean())
    return float(returns[np.argmax(steps)])


def final_returns(table: pd.DataFrame) -> pd.DataFrame:
    """Per seed: ``steps`` (its last logged global_step, any metric) and ``final_return`` (:func:`final_return`).

    ``table``: the long table of :class:`ppo_cli.plots.data.Dataset`. Columns env, run, seed, steps, final_return.
    """
    rows = []
    for (env, run, seed), group in table.groupby(["env", "run", "seed"], sort=True):
        last = float(group["step"].max())
        ret = group[group["metric"] == "episodic_return"]
        rows.append({"env": env, "run": run, "seed": seed, "steps": last,
                     "final_return": final_return(ret["step"].to_numpy(), ret["value"].to_numpy(), last)})
    return pd.DataFrame(rows, columns=["env", "run", "seed", "steps", "final_return"])


SUMMARY_COLUMNS = ["env", "run", "seeds", "seed_list", "steps_min", "steps_max", "final_mean", "final_std",
                   "final_iqm", "final_iqm_ci_low", "final_iqm_ci_high"]
EVAL_COLUMNS = ["eval_seeds", "eval_mean", "eval_std", "eval_iqm", "eval_iqm_ci_low", "eval_iqm_ci_high"]


def summarize(table: pd.DataFrame, evals: pd.DataFrame | None = None, reps: int = BOOTSTRAP_REPS,
              confidence: float = CONFIDENCE, seed: int = 0) -> pd.DataFrame:
    """One row per (env, run): seeds, steps reached, final return mean +- std and IQM with its interval.

    ``final_std`` is the sample standard deviation across seeds (ddof 1; NaN for one seed).
    ``final_iqm_ci_*``: 95% percentile interval of the IQM over a bootstrap of the seeds
    (:func:`stratified_bootstrap_ci` with the (env, run) as the one stratum). Seeds without a final
    return are left out of those numbers. With ``evals`` (rows of ``eval.json``: env, run, seed,
    mean), the same for the per-seed evaluation means, in the ``eval_*`` columns.
    """
    finals = final_returns(table)
    rows = []
    for (env, run), group in finals.groupby(["env", "run"], sort=True):
        values = group["final_return"].dropna().to_numpy(dtype=float)
        seed_list = " ".join(sorted(group["seed"], key=lambda k: (len(k), k)))  # 2 before 10
        row = {"env": env, "run": run, "seeds": len(group), "seed_list": seed_list,
               "steps_min": int(group["steps"].min()), "steps_max": int(group["steps"].max()),
               **_describe(values, "final", reps, confidence, group_rng(seed, env, run, "final"))}
        if evals is not None:
            mine = evals[(evals["env"] == env) & (evals["run"] == run)]["mean"].to_numpy(dtype=float)
            row["eval_seeds"] = len(mine)
            described = _describe(mine, "eval", reps, confidence, group_rng(seed, env, run, "eval"))
            row.update({k: described[k] for k in EVAL_COLUMNS[1:]})
            row.update(_curve_summary(table, env, run, reps, confidence, seed))
        rows.append(row)
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS + (EVAL_COLUMNS + CURVE_COLUMNS if evals is not None else []))


CURVE_COLUMNS = ["evaluations_seeds"] + [f"evaluation_{which}_{k}" for which in ("last", "best")
                                        for k in ("mean", "std", "iqm", "iqm_ci_low", "iqm_ci_high")]
"""With evaluations during training (``evaluations.csv``): each seed's last and best evaluation mean,
summarised across seeds like the final return. The best is optimistic (the maximum over a noisy
curve, as Tianshou's "best" metric); the last is what the run ended with."""


def _curve_summary(table: pd.DataFrame, env: str, run: str, reps: int, confidence: float,
                   seed: int) -> dict[str, float]:
    curve = table[(table["env"] == env) & (table["run"] == run) & (table["metric"] == "evaluation")]
    last, best = [], []
    for _, rows in curve.groupby("seed", sort=True):
        rows = rows.sort_values("step")
        last.append(float(rows["value"].iloc[-1]))
        best.append(float(rows["value"].max()))
    out: dict[str, float] = {"evaluations_seeds": len(last)}
    for which, values in (("last", last), ("best", best)):
        out.update(_describe(np.asarray(values, dtype=float), f"evaluation_{which}", reps, confidence,
                             group_rng(seed, env, run, f"evaluation_{which}")))
    return out


def _describe(values: np.ndarray, prefix: str, reps: int, confidence: float,
              rng: np.random.Generator) -> dict[str, float]:
    if not len(values):
        return {f"{prefix}_{k}": math.nan for k in ("mean", "std", "iqm", "iqm_ci_low", "iqm_ci_high")}
    low, high = stratified_bootstrap_ci([values], iqm, reps, confidence, rng)
    return {f"{prefix}_mean": float(values.mean()),
            f"{prefix}_std": float(values.std(ddof=1)) if len(values) > 1 else math.nan,
            f"{prefix}_iqm": float(iqm(values)), f"{prefix}_iqm_ci_low": low, f"{prefix}_iqm_ci_high": high}
