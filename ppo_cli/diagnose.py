"""``ppo diagnose``: read a run's diagnostics across seeds as a PPO practitioner reads them by eye.

The rules are small functions of one seed's curves (:class:`SeedCurves`) or of a run's seeds,
each returning :class:`Finding`\\ s: what is wrong, the evidence (metric, seeds, steps, the value
against its threshold or against the run's own early level), what it usually means, and what to
try, spelled as ``ppo train`` options. Thresholds live in :data:`THRESHOLDS`, each with its
source; where no published figure exists, the source is this project's own healthy runs
(``benchmarks/diagnose_cases.sh``), and a rule that fires on a healthy run is fixed, not the run.

Findings of the same rule in several seeds are merged (seeds listed, steps spanned); findings
whose steps overlap in a seed are marked as coinciding (a KL spike where the return drops).
The same seed rules run live during ``ppo train`` (:class:`LiveDiagnosis`).

Reads what ``ppo plot`` reads, with its reader (:func:`ppo_cli.plots.data.load`): never imports
the trainer or torch.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from ppo_cli.config import is_int
from ppo_cli.layout import CONFIG_FILE, ERROR_FILE, current_evaluation
from ppo_cli.plots.data import Dataset, PlotError, load, rolling_mean

SEVERITIES = ("problem", "warning", "note")


@dataclass(frozen=True)
class Threshold:
    value: float
    meaning: str
    source: str


THRESHOLDS: dict[str, Threshold] = {
    "kl_high": Threshold(0.05, "approx_kl (smoothed) above which the policy moves too far per update",
                         "5x PPO's adaptive KL target of 0.01 (Schulman et al. 2017); this project's DMC walker-run "
                         "at its best config sits at 0.03-0.044 in 80-85% of iterations and loses return with a "
                         "smaller step (--lr 1e-4: 70, 74 against 90, 106), while its unstable cases read 0.105 "
                         "(--lr 3e-3 --update-epochs 30) and 0.35 (--num-envs 1 --num-steps 16)"),
    "kl_sustained": Threshold(0.10, "share of the iterations with approx_kl above kl_high that makes it sustained",
                              "this project's healthy runs (MuJoCo and DMC) stay above 0.05 in under 5% of "
                              "iterations"),
    "kl_spike": Threshold(5.0, "a spike: approx_kl above this multiple of the seed's median (and above kl_high)",
                          "the tuning study: KL peaks exactly where the return dips"),
    "kl_spike_dip": Threshold(0.05, "fall of the smoothed return in the 5% of training after a KL spike, as a share "
                                    "of the seed's gain, from which the spike cost return (else it is a note)",
                              "the tuning study: KL peaks exactly where the return dips; after the 11 spikes of "
                              "healthy DMC cartpole-swingup seeds here (approx_kl up to 1.24) the return fell at "
                              "most 1.2% of the gain; before the collapse of a cartpole seed (diagnose_cases.sh) "
                              "5-11%, and up to 96% with --num-envs 1 --num-steps 16"),
    "cut_short": Threshold(0.5, "share of iterations whose update the KL early stop cut short (update_fraction < 1)",
                           "SB3's target_kl: an early stop that fires most iterations leaves the planned epochs unused"),
    "clipfrac_high": Threshold(0.4, "median clipfrac over the second half of training",
                               "PPO clips ratios beyond 1 +- 0.2; healthy MuJoCo runs here clip 0.05-0.2 of samples, "
                               "DMC walker-run at its best config 0.28-0.31 and walker-walk over 3M frames "
                               "0.24-0.32; --lr 3e-3 --update-epochs 30 clips 0.56"),
    "std_rise": Threshold(1.25, "late action_std / early action_std above which the policy is growing less sure",
                          "the tuning study: on DMC cheetah-run the std grew from 1 and entropy rose; "
                          "ent_coef 0 fixed it"),
    "std_collapse": Threshold(0.2, "action_std / its initial value below which the exploration is gone",
                              "Andrychowicz et al. 2021 (what matters in on-policy RL): the initial std and its "
                              "decay matter; a collapse before learning is premature convergence"),
    "low_return": Threshold(0.4, "progress (from the run's initial to its best return) below which a return is low",
                            "as for stall"),
    "entropy_early": Threshold(0.3, "share of training before which a negative entropy is early",
                               "the tuning study: entropy falling below 0 early means sigma shrinks too fast, "
                               "the actor updates too fast; silent where by then the seed has made low_return of "
                               "its gain and keeps collapse of it (DMC cartpole-swingup: negative at 27-29% of "
                               "training with 45-90% of the gain made)"),
    "vloss_explode": Threshold(100.0, "value_loss (smoothed, after the first 10% of training) above this multiple "
                                      "of its median there: exploding",
                               "the tuning study: value loss very large at first (normal: the critic is untrained), "
                               "then stuck high; healthy runs here peak at up to ~50x their median (Hopper's value "
                               "loss is tiny between falls); silent where the smoothed explained_variance near the "
                               "peak stays above ev_low (DMC cartpole-swingup: 400-3900x its median, explained "
                               "variance 0.93-0.99 there)"),
    "vloss_rise": Threshold(3.0, "late value_loss / value_loss in 10-50% of training above which it rises (when it "
                                 "is also above its level in the first 5% of training, the untrained critic's)",
                            "with reward normalisation (the default) value targets stay O(1); in 45 seeds here "
                            "(MuJoCo, DMC, the diagnose cases but diverging) the late value loss is at most 0.16x "
                            "its first level, while up to 3.7x its middle level on Hopper (its episodes lengthen) "
                            "and 26x on cartpole-swingup (9e-6 to 2.4e-4); without reward normalisation it rises "
                            "4.6x, to 4.9-6.9x its first level"),
    "ev_bad": Threshold(0.0, "median explained_variance over the last quarter below which the critic explains "
                             "nothing", "SB3/CleanRL log explained_variance: 1 is perfect, <= 0 no better than a "
                                        "constant"),
    "ev_low": Threshold(0.3, "median explained_variance over the last quarter below which the critic is weak",
                        "healthy MuJoCo runs here end above 0.9"),
    "collapse": Threshold(0.6, "smoothed final return / smoothed best (both from the initial level): a collapse "
                               "below it", "the tuning study: 'the return rises until iteration 100, drops and "
                                           "never recovers'"),
    "stall": Threshold(0.4, "a seed's final progress / the other seeds' median progress below which it stalls",
                       "this project's Walker2d-v4 default seeds 2 and 3 ended at 0.23 and 0.34 of the others' "
                       "median evaluation return; healthy 200k-step Hopper seeds here differ by up to 2x (0.46); "
                       "Henderson et al. 2018 and Agarwal et al. 2021 on seed variance"),
    "few_episodes": Threshold(10, "episodes ended per seed below which the return cannot be judged",
                              "fewer than 10 returns leave the final return (mean of the last 10% of steps) to "
                              "one or two episodes"),
    "eval_split": Threshold(0.9, "share of the variance of the final checkpoint's `ppo eval` returns between its two "
                                 "groups (the best cut of the sorted returns, 20% of the episodes or more on each "
                                 "side) above which the outcomes split in two",
                            "this project's DMC walker-walk seeds: 0.94-0.99, where the start state's tilt picks "
                            "walking or crawling; 20-50 draws from a normal, uniform, exponential or lognormal "
                            "distribution exceed 0.9 in under 1% of cases (simulated)"),
    "eval_split_episodes": Threshold(20, "evaluation episodes below which a split is not judged",
                                     "10 uniform, exponential or lognormal draws exceed eval_split 7-8% of the "
                                     "time, 20 draws under 1% (simulated)"),
}
"""Every number the rules use, with what it means and where it comes from (README "Reading a run")."""


def thresholds_table() -> str:
    """:data:`THRESHOLDS` as the markdown table of the README ("Reading a run"; a test keeps them equal)."""
    rows = ["| threshold | value | what it sets | source |", "|---|---|---|---|"]
    rows += [f"| `{name}` | {t.value:g} | {t.meaning} | {t.source} |" for name, t in THRESHOLDS.items()]
    return "\n".join(rows)


@dataclass(frozen=True)
class Finding:
    """One thing the diagnosis says about a run.

    ``steps``: the first and last ``global_step`` of the evidence; ``value`` and ``reference``:
    the measured number and what it is compared with (a threshold or the run's own level).
    """

    rule: str
    severity: str
    what: str
    metric: str
    seeds: tuple[str, ...]
    steps: tuple[int, int]
    value: float
    reference: float
    evidence: str
    meaning: str
    try_options: tuple[str, ...] = ()
    coincides: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["seeds"], data["steps"], data["try"] = list(self.seeds), list(self.steps), list(self.try_options)
        data["coincides"] = list(self.coincides)
        del data["try_options"]
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in data.items()}


@dataclass
class SeedCurves:
    """One seed's curves: ``curves[metric] = (steps, values)``, sorted by step, missing values dropped."""

    env: str
    run: str
    seed: str
    curves: dict[str, tuple[np.ndarray, np.ndarray]]
    config: dict[str, Any] = field(default_factory=dict)
    error: str = ""  # the last line of the seed's error.txt, if it failed
    evaluation: tuple[float, ...] = ()  # the returns of the final checkpoint's up-to-date ``ppo eval`` (eval.json)
    evaluation_step: int = 0  # the global_step of that checkpoint

    def get(self, metric: str) -> tuple[np.ndarray, np.ndarray] | None:
        pair = self.curves.get(metric)
        return pair if pair is not None and len(pair[0]) else None

    @property
    def last_step(self) -> int:
        return int(max((s[-1] for s, _ in self.curves.values() if len(s)), default=0))

    @property
    def total_steps(self) -> int:
        """The run's planned length (its config), else how far it got."""
        total = self.config.get("total_steps")
        return int(total) if isinstance(total, int) and total > 0 else self.last_step

    @property
    def complete(self) -> bool:
        """Whether the seed has logged its last iteration (one more would pass ``total_steps``)."""
        steps = max((pair[0] for pair in self.curves.values()), key=len, default=np.array([]))  # every iteration
        return len(steps) > 1 and self.last_step + (steps[-1] - steps[-2]) > self.total_steps

    def option(self, name: str, default: Any) -> Any:
        value = self.config.get(name, default)
        return default if value is None and default is not None else value


# ----------------------------------------------------------------------------- helpers


def smoothed(values: np.ndarray) -> np.ndarray:
    """Trailing mean over ~5% of the points (at least 1): the curve a reader sees, noise aside."""
    return rolling_mean(np.asarray(values, dtype=float), max(1, round(len(values) / 20)))


def head(values: np.ndarray, fraction: float = 0.05) -> float:
    """Mean of the first ``fraction`` of the points (at least one)."""
    return float(np.mean(values[:max(1, math.ceil(len(values) * fraction))]))


def tail(values: np.ndarray, fraction: float = 0.1) -> float:
    return float(np.mean(values[-max(1, math.ceil(len(values) * fraction)):]))


def _k(steps: float) -> str:
    steps = float(steps)
    return f"{steps / 1e6:.3g}M" if steps >= 1e6 else f"{steps / 1e3:.3g}k" if steps >= 1e3 else f"{steps:.0f}"


def _span(steps: np.ndarray) -> tuple[int, int]:
    return int(steps[0]), int(steps[-1])


def _lr(seed: SeedCurves, divide: float) -> str:
    return f"--lr {seed.option('lr', 3e-4) / divide:.2g}"


def _finding(seed: SeedCurves, rule: str, severity: str, what: str, metric: str, steps: tuple[int, int], value: float,
             reference: float, evidence: str, meaning: str, try_options: Sequence[str]) -> Finding:
    return Finding(rule, severity, what, metric, (seed.seed,), steps, float(value), float(reference), evidence,
                   meaning, tuple(try_options))


# ----------------------------------------------------------------------------- rules on one seed


def kl_too_high(seed: SeedCurves) -> list[Finding]:
    """Sustained ``approx_kl`` above :data:`THRESHOLDS` ``kl_high`` (smoothed, in >= ``kl_sustained`` of the
    iterations): each update moves the policy far from the one that collected the data."""
    pair = seed.get("approx_kl")
    if pair is None:
        return []
    steps, kl = pair
    limit = THRESHOLDS["kl_high"].value
    curve = smoothed(kl)
    above = curve > limit
    share = above.mean()
    if share < THRESHOLDS["kl_sustained"].value:
        return []
    level = float(np.median(curve[above]))  # the curve the test read: a raw median can sit below the limit
    epochs = seed.option("update_epochs", 10)
    tries = [_lr(seed, 3)] + ([] if seed.config.get("target_kl") else ["--target-kl 0.02"]) + \
        ([f"--update-epochs {max(1, epochs // 2)}"] if epochs > 2 else [])
    return [_finding(seed, "kl_high", "problem" if share > 0.3 else "warning", "policy changes too fast",
                     "approx_kl", _span(steps[above]), level, limit,
                     f"approx_kl {level:.3g} (smoothed, median where above) > {limit} in {share:.0%} of iterations",
                     "each update moves the policy far from the one that collected the data, so the clipped "
                     "objective no longer limits the step: learning becomes unstable", tries)]


def _return_gain(seed: SeedCurves) -> tuple[np.ndarray, np.ndarray, float, float] | None:
    """The seed's return steps, smoothed return, its initial level and its gain to its best; None where
    it has fewer than 10 returns or never rose."""
    pair = seed.get("episodic_return")
    if pair is None or len(pair[1]) < 10:
        return None
    curve = smoothed(pair[1])
    initial = head(curve)
    gain = float(np.max(curve)) - initial
    return (pair[0], curve, initial, gain) if gain > 0 else None


def _value_at(steps: np.ndarray, values: np.ndarray, step: float) -> float:
    """The curve's value at its first point at or after ``step`` (its last point past the end)."""
    return values[min(np.searchsorted(steps, step), len(values) - 1)]


def _window(seed: SeedCurves) -> float:
    """The steps after an event in which its effect is read: 5% of training (the smoothing's span)."""
    return 0.05 * seed.total_steps


def return_dip(seed: SeedCurves, step: float) -> float | None:
    """How far the smoothed return falls in the :func:`_window` after ``step``, from its level just
    before: a share of the seed's gain (0 where it does not fall). None where that cannot be read."""
    return _dip_after(_return_gain(seed), step, _window(seed))


def _dip_after(gain: tuple[np.ndarray, np.ndarray, float, float] | None, step: float, window: float) -> float | None:
    """:func:`return_dip` on a :func:`_return_gain` computed once for all of a seed's spikes."""
    if gain is None:
        return None
    steps, curve, _, rise = gain
    before, after = curve[steps < step], curve[(steps >= step) & (steps <= step + window)]
    if not len(after):
        return None
    level = before[-1] if len(before) else after[0]  # a spike before the first return: from the first
    return max(0.0, float(level - np.min(after)) / rise)


def kl_spikes(seed: SeedCurves) -> list[Finding]:
    """Single iterations whose ``approx_kl`` exceeds ``kl_spike`` times the seed's median (and ``kl_high``).

    A warning where the smoothed return falls by ``kl_spike_dip`` of the seed's gain within 5% of
    training after a spike (or where the return cannot be read), else a note. A spike is judged once
    that window has passed, or the run has ended."""
    pair = seed.get("approx_kl")
    if pair is None or len(pair[1]) < 10:
        return []
    steps, kl = pair
    median = float(np.median(kl))
    spikes = (kl > THRESHOLDS["kl_spike"].value * median) & (kl > THRESHOLDS["kl_high"].value)
    if not seed.complete:
        spikes &= steps + _window(seed) <= seed.last_step
    if not spikes.any():
        return []
    gain, window = _return_gain(seed), _window(seed)
    dips = {int(i): _dip_after(gain, steps[i], window) for i in np.flatnonzero(spikes)}
    limit = THRESHOLDS["kl_spike_dip"].value
    hurt = [i for i, dip in dips.items() if dip is None or dip >= limit]
    shown = hurt or list(dips)
    worst = max(shown, key=lambda i: kl[i])
    evidence = (f"approx_kl {kl[worst]:.3g} at step {_k(steps[worst])}, {kl[worst] / median:.0f}x the seed's "
                f"median {median:.2g} ({len(dips)} spike(s))")
    if not hurt:
        deepest = max(dips.values())
        return [_finding(seed, "kl_spike", "note", "KL spikes, and the return held", "approx_kl",
                         _span(steps[spikes]), kl[worst], median,
                         evidence + f"; the smoothed return fell at most {deepest:.0%} of the seed's gain in the "
                         f"5% of training after each (a dip: {limit:.0%})",
                         "a few updates jumped far, but none cost return: with a small action std a small "
                         "change of the mean makes a few probability ratios huge, which approx_kl weighs heavily",
                         [])]
    dip = dips[worst]
    return [_finding(seed, "kl_spike", "warning", "KL spikes", "approx_kl", _span(steps[hurt]), kl[worst], median,
                     evidence + ("" if dip is None else f"; the smoothed return fell {dip:.0%} of the seed's gain "
                                                        f"in the 5% of training after it"),
                     "a few updates jump far: the return often dips right there",
                     [_lr(seed, 2)] + ([] if seed.config.get("target_kl") else ["--target-kl 0.02"]))]


def updates_cut_short(seed: SeedCurves) -> list[Finding]:
    """With ``--target-kl``: ``update_fraction < 1`` in more than ``cut_short`` of the iterations."""
    pair, target = seed.get("update_fraction"), seed.config.get("target_kl")
    if pair is None or not target:
        return []
    steps, fraction = pair
    cut = fraction < 1.0
    share = cut.mean()
    if share <= THRESHOLDS["cut_short"].value:
        return []
    median = float(np.median(fraction))
    return [_finding(seed, "cut_short", "warning", "KL early stop cuts most updates short", "update_fraction",
                     _span(steps[cut]), share, THRESHOLDS["cut_short"].value,
                     f"update_fraction < 1 in {share:.0%} of iterations (median {median:.2f}) with --target-kl {target}",
                     "the policy reaches the KL limit before the planned epochs end: the step size is large for "
                     "this target, and most of each batch's planned updates are skipped",
                     [_lr(seed, 2), f"--target-kl {2 * target:g}"])]


def clipfrac_high(seed: SeedCurves) -> list[Finding]:
    """Median ``clipfrac`` over the second half of training above ``clipfrac_high``."""
    pair = seed.get("clipfrac")
    if pair is None or len(pair[1]) < 4:
        return []
    steps, clip = pair
    half = steps >= steps[-1] / 2
    level = float(np.median(clip[half]))
    limit = THRESHOLDS["clipfrac_high"].value
    if level <= limit:
        return []
    epochs = seed.option("update_epochs", 10)
    return [_finding(seed, "clipfrac_high", "warning", "most samples are clipped", "clipfrac", _span(steps[half]),
                     level, limit, f"clipfrac {level:.2f} (median over the second half) > {limit}",
                     "the updates push many probability ratios past the clip range, where they get no gradient: "
                     "the step size is too large for the clip", [_lr(seed, 3)] +
                     ([f"--update-epochs {max(1, epochs // 2)}"] if epochs > 2 else []))]


def std_rising(seed: SeedCurves) -> list[Finding]:
    """Gaussian policies: late ``action_std`` above ``std_rise`` times its early level (entropy rising)."""
    pair = seed.get("action_std")
    if pair is None or len(pair[1]) < 10:
        return []
    steps, std = pair
    early, late = head(smoothed(std)), tail(smoothed(std))
    if not early > 0:  # a std of 0 (or NaN) at the start: no level to rise from
        return []
    ratio = late / early
    if not ratio > THRESHOLDS["std_rise"].value:
        return []
    ent_coef = seed.option("ent_coef", 0.0)
    tries = ["--ent-coef 0"] if ent_coef > 0 else [_lr(seed, 3), f"--init-log-std {seed.option('init_log_std', 0) - 0.5:g}"]
    return [_finding(seed, "std_rising", "problem" if ratio > 2 else "warning",
                     "action std grows: entropy rises instead of falling", "action_std", _span(steps), late, early,
                     f"action_std {early:.2f} -> {late:.2f} ({ratio:.1f}x its early level)" +
                     (f" with --ent-coef {ent_coef:g}" if ent_coef > 0 else ""),
                     "the policy grows less sure as it trains: the entropy bonus (or a weak, noisy advantage) "
                     "outweighs the return, exploration grows instead of shrinking, and the return stalls or "
                     "crashes late", tries)]


def entropy_negative_early(seed: SeedCurves) -> list[Finding]:
    """Gaussian policies: smoothed entropy below 0 before ``entropy_early`` of the planned steps, unless
    by then the seed had made ``low_return`` of its gain and it keeps ``collapse`` of it at the end
    (a task learned fast narrows fast: DMC cartpole-swingup at 27% of training, 90% of its gain made)."""
    pair = seed.get("entropy")
    if pair is None or seed.get("action_std") is None:
        return []
    steps, entropy = pair
    early = steps <= THRESHOLDS["entropy_early"].value * seed.total_steps
    curve = smoothed(entropy)
    negative = early & (curve < 0)
    if not negative.any():
        return []
    first = int(np.argmax(negative))
    gain = _return_gain(seed)
    if gain is not None:
        ret_steps, ret, initial, rise = gain
        at = _value_at(ret_steps, ret, steps[first])
        if (at - initial) / rise >= THRESHOLDS["low_return"].value and \
                (tail(ret) - initial) / rise >= THRESHOLDS["collapse"].value:
            return []  # it narrowed once the return was earned, and kept it
    return [_finding(seed, "entropy_early", "warning", "entropy negative early: the actor narrows too fast", "entropy",
                     (int(steps[first]), int(steps[early][-1])), curve[first], 0.0,
                     f"entropy < 0 from step {_k(steps[first])}, {steps[first] / seed.total_steps:.0%} into training",
                     "a Gaussian's entropy turns negative when its std gets small; this early, the actor is "
                     "updating faster than the critic can follow", [_lr(seed, 3), "--clip-vloss", "--ent-coef 0.001"])]


def _explained_near(seed: SeedCurves, step: float) -> float | None:
    """The lowest smoothed ``explained_variance`` within :func:`_window` of ``step`` (smoothed as the
    value loss is, so a burst reads at the same points); None where it is not logged."""
    pair = seed.get("explained_variance")
    if pair is None:
        return None
    near = np.abs(pair[0] - step) <= _window(seed)
    return float(np.min(smoothed(pair[1])[near])) if near.any() else None


def value_loss_exploding(seed: SeedCurves) -> list[Finding]:
    """``value_loss`` far above its own median (``vloss_explode``) while the critic stops explaining the
    returns there (smoothed ``explained_variance`` within 5% of training below ``ev_low``, where logged),
    or rising late (``vloss_rise``) to above its level in the first 5% of training.

    A peak with the critic still explaining the returns is its targets changing as the policy learns
    (DMC cartpole-swingup: 0.012 at a median of 3e-6, explained variance 0.93-0.99 there); a rise
    that stays far below the untrained critic's error is small numbers moving (9e-6 to 2e-4)."""
    pair = seed.get("value_loss")
    if pair is None or len(pair[1]) < 10:
        return []
    steps, loss = pair
    settled = steps > 0.1 * steps[-1]  # the untrained critic's first errors are large in every run
    if settled.sum() < 2:
        return []
    curve = smoothed(loss[settled])
    median = float(np.median(loss[settled]))
    tries = ([] if seed.option("norm_reward", True) else ["--norm-reward"]) + ["--clip-vloss", _lr(seed, 3)]
    peak = int(np.argmax(curve))
    explained = _explained_near(seed, steps[settled][peak])
    if median > 0 and curve[peak] > THRESHOLDS["vloss_explode"].value * median and \
            not (explained is not None and explained >= THRESHOLDS["ev_low"].value):
        steps = steps[settled]
        return [_finding(seed, "vloss_explode", "problem", "value loss explodes", "value_loss", (int(steps[peak]),) * 2,
                         curve[peak], median, f"value_loss {curve[peak]:.3g} at step {_k(steps[peak])}, "
                         f"{curve[peak] / median:.0f}x its median {median:.3g}",
                         "the critic's targets jump (unscaled rewards, a return that changes scale): its error "
                         "swamps the gradient", tries)]
    middle = (steps >= 0.1 * steps[-1]) & (steps <= 0.5 * steps[-1])
    late = steps >= 0.75 * steps[-1]
    if middle.sum() < 2 or late.sum() < 2:
        return []
    before, after, start = float(np.median(loss[middle])), float(np.median(loss[late])), head(loss)
    if before > 0 and after > THRESHOLDS["vloss_rise"].value * before and after > start:
        return [_finding(seed, "vloss_rise", "warning", "value loss rises", "value_loss", _span(steps[late]), after,
                         before, f"value_loss {after:.3g} in the last quarter, {after / before:.1f}x its level at "
                         f"10-50% of training ({before:.3g}) and above the untrained critic's ({start:.3g})",
                         "the critic falls behind the returns it must predict (the reward scale grows, or the "
                         "critic learns too slowly)", tries)]
    return []


def critic_not_learning(seed: SeedCurves) -> list[Finding]:
    """Median ``explained_variance`` over the last quarter below ``ev_bad`` (problem) or ``ev_low``."""
    pair = seed.get("explained_variance")
    if pair is None or len(pair[1]) < 8:
        return []
    steps, ev = pair
    late = steps >= 0.75 * steps[-1]
    level = float(np.median(ev[late]))
    bad, low = THRESHOLDS["ev_bad"].value, THRESHOLDS["ev_low"].value
    if level >= low:
        return []
    tries = ([] if seed.option("norm_reward", True) else ["--norm-reward"]) + \
        [f"--vf-coef {max(0.5, 2 * seed.option('vf_coef', 0.25)):g}", "--gae-lambda 0.95"]
    return [_finding(seed, "critic", "problem" if level < bad else "warning",
                     "the critic does not predict the returns" if level < bad else "the critic explains little",
                     "explained_variance", _span(steps[late]), level, bad if level < bad else low,
                     f"explained_variance {level:.2f} (median of the last quarter) < {bad if level < bad else low}",
                     "the value function is no better than a constant at predicting returns, so the advantages "
                     "are mostly noise (often the reward scale, or a critic too weak or too slow)", tries)]


def return_collapse(seed: SeedCurves) -> list[Finding]:
    """The smoothed return falls back, after its peak, below ``collapse`` of the way from its initial level
    to its best; the evidence says where the peak was and what the KL did there."""
    pair = seed.get("episodic_return")
    if pair is None or len(pair[1]) < 10:
        return []
    steps, ret = pair
    curve = smoothed(ret)
    initial, peak = head(curve), int(np.argmax(curve))
    best, final = float(curve[peak]), tail(curve)
    gain = best - initial
    if gain <= 0.1 * max(abs(best), abs(initial), 1e-9) or steps[peak] > 0.9 * steps[-1]:
        return []
    kept = (final - initial) / gain
    if kept >= THRESHOLDS["collapse"].value:
        return []
    after = np.flatnonzero((np.arange(len(curve)) > peak) & (curve < initial + THRESHOLDS["collapse"].value * gain))
    drop = int(after[0]) if len(after) else len(curve) - 1
    evidence = (f"return {initial:.4g} -> best {best:.4g} at step {_k(steps[peak])} -> {final:.4g} at the end "
                f"({kept:.0%} of the gain kept)")
    kl = seed.get("approx_kl")
    if kl is not None:
        window = (kl[0] >= steps[peak]) & (kl[0] <= steps[drop])
        if window.any():
            there, median = float(np.max(kl[1][window])), float(np.median(kl[1]))
            evidence += f"; approx_kl up to {there:.3g} there" + (f" ({there / median:.1f}x its median)"
                                                                 if median > 0 else "")
    return [_finding(seed, "collapse", "problem", "the return collapses after a peak", "episodic_return",
                     (int(steps[peak]), int(steps[drop])), kept, THRESHOLDS["collapse"].value, evidence,
                     "the policy was improving, then an update (or a run of them) destroyed it and it never "
                     "recovered: usually steps too large late in training",
                     [_lr(seed, 3), "--target-kl 0.02"] + ([] if seed.option("anneal_lr", True) else ["--anneal-lr"]))]


def diverged(seed: SeedCurves) -> list[Finding]:
    """The seed stopped on a NaN or infinite value (its ``error.txt``), or logged an infinite one."""
    infinite = [m for m, (_, v) in seed.curves.items() if len(v) and not np.isfinite(v).all()]
    nan_stop = any(word in seed.error for word in ("became nan", "became inf", "non-finite", "became -inf"))
    if not infinite and not nan_stop:
        return []
    what = seed.error if nan_stop else f"infinite values in {', '.join(infinite)}"
    return [_finding(seed, "non_finite", "problem", "training diverged (NaN or infinite values)",
                     infinite[0] if infinite else "loss", (seed.last_step, seed.last_step), math.nan, math.nan, what,
                     "a loss or parameter became NaN or infinite: the step size, the reward or observation scale "
                     "(an environment returning NaN or huge values), or missing normalisation",
                     [_lr(seed, 3)] + (["--max-grad-norm 0.5"] if seed.option("max_grad_norm", 0.5) > 0.5 else []) +
                     [f"--norm-{what}" for what in ("obs", "reward") if not seed.option(f"norm_{what}", True)])]


def failed(seed: SeedCurves) -> list[Finding]:
    """The seed failed for another reason than a NaN (its ``error.txt``): a full disk, a hung or broken
    environment. Its curves end there."""
    if not seed.error or diverged(seed):
        return []
    return [_finding(seed, "failed", "problem", "the seed failed", "episodic_return", (seed.last_step,) * 2, math.nan,
                     math.nan, seed.error, "training stopped before its end for the reason given; the rows and the "
                     "checkpoint up to there are kept", ["ppo train --resume RUN, once the cause is fixed"])]


def few_episodes(seed: SeedCurves) -> list[Finding]:
    """Fewer than ``few_episodes`` episodes ended: the return curve is one or two episodes."""
    pair, counts = seed.get("episodic_return"), seed.get("episodes")
    ended = int(np.sum(counts[1][np.isfinite(counts[1])])) if counts is not None else \
        (len(pair[0]) if pair is not None else 0)
    limit = int(THRESHOLDS["few_episodes"].value)
    if ended >= limit:
        return []
    return [_finding(seed, "few_episodes", "note", "too few episodes ended to judge the return", "episodes",
                     (0, seed.last_step), ended, limit, f"{ended} episode(s) ended in {_k(seed.last_step)} steps",
                     "episodes are longer than the run so far: the return shown is one or two episodes, and the "
                     "rules on returns stay silent", [f"--total-steps {max(4 * seed.total_steps, 100_000)}"])]


def two_groups(returns: Sequence[float], share: float = 0.2) -> tuple[float, int]:
    """The best cut of the sorted ``returns`` into a lower and an upper group, each holding at least
    ``share`` of them: (the share of the variance between the groups, the size of the lower group).
    (0, 0) where the returns do not vary or are too few to cut."""
    values = np.sort(np.asarray(returns, dtype=float))
    n = len(values)
    smallest = max(1, math.ceil(share * n))
    values = values - values.mean() if n else values  # centred: the running sums below lose no digits
    total = float(np.sum(values ** 2))
    if n < 2 * smallest or not total > 0:
        return 0.0, 0
    cumsum, cumsq = np.cumsum(values), np.cumsum(values ** 2)
    k = np.arange(smallest, n - smallest + 1)  # the lower group's sizes
    low = cumsq[k - 1] - cumsum[k - 1] ** 2 / k
    high = (cumsq[-1] - cumsq[k - 1]) - (cumsum[-1] - cumsum[k - 1]) ** 2 / (n - k)
    between = 1.0 - (low + high) / total
    best = int(np.argmax(between))
    return float(between[best]), int(k[best])


def evaluation_split(seed: SeedCurves) -> list[Finding]:
    """The final checkpoint's ``ppo eval`` returns (``eval_split_episodes`` or more) fall into two groups
    far apart for their own spread (``eval_split`` of the variance between them), and far apart for
    the returns' scale (10% of the larger group mean's size): the deterministic policy succeeds from
    some start states and fails from others."""
    returns = np.asarray(seed.evaluation, dtype=float)
    if len(returns) < THRESHOLDS["eval_split_episodes"].value or not np.all(np.isfinite(returns)):
        return []
    between, k = two_groups(returns)
    ordered = np.sort(returns)
    low, high = (float(ordered[:k].mean()), float(ordered[k:].mean())) if k else (0.0, 0.0)
    if between < THRESHOLDS["eval_split"].value or high - low < 0.1 * max(abs(low), abs(high)):
        return []
    n = len(returns)
    return [_finding(seed, "eval_split", "note", "the evaluation splits in two: some start states fail",
                     "evaluation", (seed.evaluation_step,) * 2, between, THRESHOLDS["eval_split"].value,
                     f"`ppo eval` at step {_k(seed.evaluation_step)}: {k} of {n} episodes average {low:.4g} "
                     f"({ordered[0]:.4g} to {ordered[k - 1]:.4g}), the other {n - k} {high:.4g} ({ordered[k]:.4g} "
                     f"to {ordered[-1]:.4g}); the groups hold {between:.0%} of the variance; the mean "
                     f"{returns.mean():.4g} describes neither",
                     "the deterministic policy reaches one behaviour from some start states and another from the "
                     "rest (DMC walker-walk: walking, or crawling on its knees after a backward start): a change "
                     "moves the mean by moving episodes between the groups, and two seeds rarely show that",
                     ["ppo eval SEED_FOLDER --render --frames 5000 (watch the first episodes; each episode's "
                      "return is in eval.json)", "--seeds 5"])]


SEED_RULES: tuple[Callable[[SeedCurves], list[Finding]], ...] = (
    diverged, failed, kl_too_high, kl_spikes, updates_cut_short, clipfrac_high, std_rising, entropy_negative_early,
    value_loss_exploding, critic_not_learning, return_collapse, few_episodes, evaluation_split)
"""The rules that read one seed (also run live during ``ppo train``)."""


# ----------------------------------------------------------------------------- rules on a run's seeds


def _progress(seeds: Sequence[SeedCurves]) -> tuple[dict[str, np.ndarray], float, float] | None:
    """Smoothed returns per seed, the run's initial level (mean of the seeds') and best (max over seeds)."""
    curves = {s.seed: smoothed(s.get("episodic_return")[1]) for s in seeds
              if s.get("episodic_return") is not None and len(s.get("episodic_return")[1]) >= 10}
    if not curves:
        return None
    initial = float(np.mean([head(c) for c in curves.values()]))
    best = float(max(np.max(c) for c in curves.values()))
    return (curves, initial, best) if best > initial else None


def std_collapse(seeds: Sequence[SeedCurves]) -> list[Finding]:
    """A seed's ``action_std`` falls below ``std_collapse`` of its initial value while its return is still
    low (below ``low_return`` of the way from the run's initial to its best return), and stays low."""
    progress = _progress(seeds)
    if progress is None:
        return []
    curves, initial, best = progress
    found = []
    for seed in seeds:
        pair = seed.get("action_std")
        if pair is None or seed.seed not in curves or len(pair[1]) < 10:
            continue
        steps, std = pair
        curve = smoothed(std)
        collapsed = np.flatnonzero(curve < THRESHOLDS["std_collapse"].value * head(curve))
        if not len(collapsed):
            continue
        ret_steps, ret = seed.get("episodic_return")[0], curves[seed.seed]
        at = _value_at(ret_steps, ret, steps[collapsed[0]])
        low = THRESHOLDS["low_return"].value
        if (at - initial) / (best - initial) >= low or (tail(ret) - initial) / (best - initial) >= low:
            continue
        found.append(_finding(seed, "std_collapse", "warning", "action std collapses while the return is still low",
                              "action_std", (int(steps[collapsed[0]]), int(steps[-1])), curve[collapsed[0]], head(curve),
                              f"action_std {head(curve):.2f} -> {curve[collapsed[0]]:.2g} by step "
                              f"{_k(steps[collapsed[0]])} with the return at {at:.4g} (the run's best {best:.4g})",
                              "the policy stopped exploring before it found a good behaviour: premature convergence",
                              ["--ent-coef 0.001", f"--init-log-std {seed.option('init_log_std', -0.5) + 0.5:g}",
                               _lr(seed, 2)]))
    return found


def seeds_disagree(seeds: Sequence[SeedCurves]) -> list[Finding]:
    """With 2+ seeds: a seed whose final progress is below ``stall`` of the other seeds' median progress."""
    progress = _progress(seeds)
    if progress is None or len(progress[0]) < 2:
        return []
    curves, initial, best = progress
    finals = {seed: tail(curve) - initial for seed, curve in curves.items()}
    stalled = []
    for seed, gain in finals.items():
        others = np.median([g for s, g in finals.items() if s != seed])
        if others > 0 and gain / others < THRESHOLDS["stall"].value:
            stalled.append((seed, gain / others))
    if not stalled:
        return []
    by_seed = {s.seed: s for s in seeds}
    steps = [int(by_seed[s].last_step) for s, _ in stalled]
    names = ", ".join(s for s, _ in stalled)
    return [Finding("stall", "warning", f"seeds disagree: seed {names} stall(s) far below the others",
                    "episodic_return", tuple(s for s, _ in stalled), (0, max(steps)), min(r for _, r in stalled),
                    THRESHOLDS["stall"].value,
                    "final progress " + ", ".join(f"seed {s}: {r:.0%}" for s, r in stalled) +
                    f" of the other seeds' median ({len(finals)} seeds)",
                    "one config, different seeds, different outcomes: before comparing configs, run more seeds "
                    "and compare intervals, not means", (f"--seeds {max(5, 2 * len(finals))}",))]


RUN_RULES: tuple[Callable[[Sequence[SeedCurves]], list[Finding]], ...] = (std_collapse, seeds_disagree)


# ----------------------------------------------------------------------------- a run's report


@dataclass
class RunReport:
    env: str
    run: str
    seeds: tuple[str, ...]
    findings: list[Finding]

    @property
    def healthy(self) -> bool:
        return not any(f.severity in ("problem", "warning") for f in self.findings)

    def to_dict(self) -> dict[str, Any]:
        return {"env": self.env, "run": self.run, "seeds": list(self.seeds), "healthy": self.healthy,
                "findings": [f.to_dict() for f in self.findings]}


def diagnose_seeds(seeds: Sequence[SeedCurves]) -> list[Finding]:
    """Every rule on a run's seeds: merged across seeds, coincidences marked, most severe first."""
    per_seed = [f for seed in seeds for rule in SEED_RULES for f in rule(seed)]
    per_seed += [f for rule in RUN_RULES for f in rule(seeds)]
    findings = _mark_coincidences(_merge(per_seed), per_seed)
    first = ("non_finite", "failed")  # the cause of what else a failed seed shows
    return sorted(findings, key=lambda f: (SEVERITIES.index(f.severity), f.rule not in first, -_badness(f)))


def _badness(finding: Finding) -> float:
    if not (math.isfinite(finding.value) and math.isfinite(finding.reference)) or finding.reference == 0:
        return 0.0
    return abs(finding.value / finding.reference - 1.0)


def _merge(findings: list[Finding]) -> list[Finding]:
    """One finding per rule and severity: the seeds affected, the steps spanned, the worst seed's evidence
    (a seed whose KL spike cost return is a warning; one whose return held, a note beside it)."""
    merged: dict[tuple[str, str], list[Finding]] = {}
    for f in findings:
        merged.setdefault((f.rule, f.severity), []).append(f)
    out = []
    for group in merged.values():
        worst = max(group, key=lambda f: (SEVERITIES[::-1].index(f.severity), _badness(f)))
        seeds = tuple(sorted({s for f in group for s in f.seeds}, key=lambda s: (len(s), s)))
        evidence = worst.evidence if len(seeds) == 1 else f"seed {worst.seeds[0]}: {worst.evidence}"
        out.append(replace(worst, seeds=seeds, evidence=evidence,
                           steps=(min(f.steps[0] for f in group), max(f.steps[1] for f in group))))
    return out


def _mark_coincidences(findings: list[Finding], per_seed: list[Finding]) -> list[Finding]:
    """Note, on each finding, the others whose steps overlap its own in the same seed."""
    def overlap(a: Finding, b: Finding) -> bool:
        return a.rule != b.rule and set(a.seeds) & set(b.seeds) and a.steps[0] <= b.steps[1] and b.steps[0] <= a.steps[1]

    out = []
    for f in findings:
        mine = [p for p in per_seed if p.rule == f.rule and p.severity == f.severity]
        others = {p.rule: p for p in per_seed for m in mine if overlap(m, p) and p.rule not in ("few_episodes",)}
        notes = tuple(f"{p.what} (steps {_k(p.steps[0])}-{_k(p.steps[1])}, seed {p.seeds[0]})" for p in others.values())
        out.append(replace(f, coincides=notes))
    return out


def seed_curves(dataset: Dataset) -> dict[tuple[str, str], list[SeedCurves]]:
    """The :class:`SeedCurves` of every seed in ``dataset``, grouped by (env, run)."""
    folders = {(r.env, r.run, r.seed): Path(r.path) for r in dataset.seed_folders.itertuples(index=False)}
    runs: dict[tuple[str, str], list[SeedCurves]] = {}
    for (env, run, seed), rows in dataset.table.groupby(["env", "run", "seed"], sort=True):
        curves = {}
        for metric, part in rows.groupby("metric", sort=False):
            series = part.groupby("step")["value"].mean().sort_index()  # one value per step
            curves[metric] = (series.index.to_numpy(dtype=float), series.to_numpy(dtype=float))
        folder = folders.get((env, run, seed))
        returns, step = _read_evaluation(folder)
        runs.setdefault((env, run), []).append(
            SeedCurves(env, run, seed, curves, _read_config(folder), _read_error(folder), returns, step))
    for seeds in runs.values():
        seeds.sort(key=lambda s: (len(s.seed), s.seed))
    return runs


def _read_config(folder: Path | None) -> dict[str, Any]:
    try:
        data = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
    except (TypeError, OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _read_evaluation(folder: Path | None) -> tuple[tuple[float, ...], int]:
    """The returns and step of the seed's up-to-date ``eval.json`` (:func:`~ppo_cli.layout.current_evaluation`);
    none where it is missing, stale, another checkpoint's, or holds anything but finite numbers."""
    result = current_evaluation(folder) if folder is not None else None
    returns = result.get("returns") if result is not None else None
    step = result.get("global_step") if result is not None else None
    if not isinstance(returns, list) or not all(isinstance(r, (int, float)) and not isinstance(r, bool) and
                                                math.isfinite(r) for r in returns):
        return (), 0
    return tuple(float(r) for r in returns), step if is_int(step) else 0


def _read_error(folder: Path | None) -> str:
    try:
        lines = (folder / ERROR_FILE).read_text(encoding="utf-8").strip().splitlines()
    except (TypeError, OSError, UnicodeDecodeError):
        return ""
    return lines[-1] if lines else ""


def diagnose(folders: Sequence[Path]) -> tuple[list[RunReport], list[str]]:
    """Read every run below ``folders`` (as ``ppo plot`` does) and diagnose each; returns the reports and the
    reader's warnings. A seed that failed before logging a row (its ``error.txt`` says why) is diagnosed
    too. Raises :class:`~ppo_cli.plots.data.PlotError` when nothing can be read."""
    try:
        dataset = load(folders)
    except PlotError as exc:
        runs, warnings = {}, exc.warnings
        if not _failed_without_rows(folders, runs):
            raise
    else:
        runs, warnings = seed_curves(dataset), dataset.warnings
        _failed_without_rows(folders, runs)
    reports = [RunReport(env, run, tuple(s.seed for s in seeds), diagnose_seeds(seeds))
               for (env, run), seeds in sorted(runs.items())]
    return reports, warnings


def _failed_without_rows(folders: Sequence[Path], runs: dict[tuple[str, str], list[SeedCurves]]) -> bool:
    """Add to ``runs`` the failed seed folders below ``folders`` that logged no row; whether there were any."""
    known = {(s.env, s.run, s.seed) for seeds in runs.values() for s in seeds}
    added = False
    for error in sorted({p for folder in folders for p in Path(folder).rglob(ERROR_FILE)}):
        folder, config = error.parent, _read_config(error.parent)
        env = config.get("env_id") if isinstance(config.get("env_id"), str) else folder.parent.parent.name
        seed = str(config.get("seed", folder.name.removeprefix("seed_")))
        if (env, folder.parent.name, seed) in known:
            continue
        runs.setdefault((env, folder.parent.name), []).append(
            SeedCurves(env, folder.parent.name, seed, {}, config, _read_error(folder)))
        added = True
    return added


def highlights(reports: Sequence[RunReport]) -> tuple[list[Any], list[str]]:
    """What ``ppo diagnose --plot`` shades: one :class:`~ppo_cli.plots.figure.Highlight` per finding on a
    plotted metric, and the figure's rows (``ppo plot``'s defaults, plus the metrics findings name)."""
    from ppo_cli.plots import DEFAULT_METRICS
    from ppo_cli.plots.data import valid_metrics
    from ppo_cli.plots.figure import Highlight

    plottable = set(valid_metrics())
    metrics = list(DEFAULT_METRICS) + sorted({f.metric for r in reports for f in r.findings
                                             if f.metric in plottable and f.metric not in DEFAULT_METRICS})
    several = len({(r.env, r.run) for r in reports}) > 1
    marks = [Highlight(r.env, f.metric, f.steps[0], f.steps[1],
                       f"{f.what} ({'run ' + r.run + ', ' if several else ''}seed{'s' if len(f.seeds) > 1 else ''} "
                       f"{', '.join(f.seeds)})", f.severity)
             for r in reports for f in r.findings if f.metric in metrics]
    return marks, metrics


# ----------------------------------------------------------------------------- live, during training


class LiveDiagnosis:
    """The seed rules, run every ``every`` iterations on the rows a seed has logged so far.

    ``add(row)`` takes a ``progress.csv`` row (as ``ppo train`` reports it) and returns the findings
    that were not there before (or grew more severe), most severe first: often none, and more than
    one when several rules fire at the same check. Never raises: a diagnosis
    must not stop a run. By default the rules run every 10 iterations, or 100 times in all in a
    run of more than 1000 iterations (each run reads every row so far).
    """

    def __init__(self, config: dict[str, Any], every: int | None = None) -> None:
        self.config = config
        if every is None:
            try:
                iterations = int(config["total_steps"]) // (int(config["num_steps"]) * int(config["num_envs"]))
            except (KeyError, TypeError, ValueError, ZeroDivisionError):
                iterations = 0
            every = max(10, iterations // 100)
        self.every = every
        self.rows: list[dict[str, Any]] = []
        self.seen: dict[str, int] = {}  # rule -> the most severe SEVERITIES index reported: escalations are new
        self.latest: Finding | None = None

    def add(self, row: dict[str, Any]) -> list[Finding]:
        self.rows.append(row)
        if len(self.rows) % self.every:
            return []
        try:
            frame = pd.DataFrame(self.rows)
            curves = {}
            for metric in frame.columns:
                if metric in ("global_step", "iteration"):
                    continue
                part = frame[["global_step", metric]].apply(pd.to_numeric, errors="coerce").dropna()
                curves[metric] = (part["global_step"].to_numpy(dtype=float), part[metric].to_numpy(dtype=float))
            seed = SeedCurves("", "", str(self.config.get("seed", "")), curves, self.config)
            new = [f for rule in SEED_RULES if rule is not few_episodes for f in rule(seed)
                   if SEVERITIES.index(f.severity) < self.seen.get(f.rule, len(SEVERITIES))]
        except Exception:  # noqa: BLE001 - a diagnosis must never stop training
            return []
        if not new:
            return []
        self.seen.update((f.rule, SEVERITIES.index(f.severity)) for f in new)
        new.sort(key=lambda f: SEVERITIES.index(f.severity))  # stable: rule order within a severity
        self.latest = new[0]
        return new
