"""ppo diagnose: every rule on synthetic curves (fires on its pattern, silent on a healthy curve), the
merging across seeds, coincidences, the live diagnosis, and the command (table, --json, --plot, bad input)."""

from __future__ import annotations

import json
import os
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from ppo_cli import diagnose as dg
from ppo_cli.cli import cli
from ppo_cli.diagnose import SeedCurves

N = 200
STEPS = np.arange(1, N + 1, dtype=float) * 2048


def healthy_curves(**overrides) -> dict[str, np.ndarray]:
    """What a healthy default Hopper run looks like, noise included (values measured on real runs)."""
    rng = np.random.default_rng(0)
    t = np.linspace(0, 1, N)
    curves = {
        "episodic_return": 50 + 2500 * (1 - np.exp(-4 * t)) + rng.normal(0, 60, N),
        "approx_kl": 0.008 + 0.002 * rng.random(N),
        "clipfrac": 0.08 + 0.02 * rng.random(N),
        "action_std": 0.61 * np.exp(-1.0 * t),
        "entropy": 3 * (np.log(0.61 * np.exp(-1.0 * t)) + 1.4189),
        "value_loss": 0.5 + 0.2 * rng.random(N),
        "explained_variance": 0.3 + 0.6 * (1 - np.exp(-5 * t)),
        "update_fraction": np.ones(N),
        "episodes": np.full(N, 3.0),
    }
    curves.update(overrides)
    return curves


def seed(curves: dict[str, np.ndarray] | None = None, name: str = "0", config: dict | None = None,
         error: str = "", **overrides) -> SeedCurves:
    curves = healthy_curves(**overrides) if curves is None else curves
    return SeedCurves("Hopper-v5", "default", name, {m: (STEPS[:len(v)], np.asarray(v, float)) for m, v in curves.items()},
                      {"total_steps": int(STEPS[-1]), "lr": 3e-4, "update_epochs": 10, **(config or {})}, error)


def rules_fired(s: SeedCurves) -> set[str]:
    return {f.rule for rule in dg.SEED_RULES for f in rule(s)}


def test_a_healthy_seed_has_no_finding():
    assert rules_fired(seed()) == set()
    assert dg.diagnose_seeds([seed(name=str(k)) for k in range(3)]) == []


def test_sustained_kl_is_a_problem_with_the_options_to_try():
    kl = np.where(np.arange(N) > 60, 0.1, 0.008)
    (finding,) = dg.kl_too_high(seed(approx_kl=kl))
    assert finding.severity == "problem" and finding.what == "policy changes too fast"
    assert STEPS[61] <= finding.steps[0] <= STEPS[61 + 10] and finding.steps[1] == STEPS[-1]  # smoothing lags
    assert finding.value == pytest.approx(0.1)
    assert finding.try_options == ("--lr 0.0001", "--target-kl 0.02", "--update-epochs 5")
    # DMC walker-run at its best config: 0.03-0.044 in 80-85% of iterations, and a smaller step loses return
    walker_run = 0.032 + 0.012 * np.random.default_rng(0).random(N)
    assert dg.kl_too_high(seed(approx_kl=walker_run)) == []  # below 0.05 however long


def test_the_kl_evidence_quotes_the_smoothed_curve_the_rule_read():
    """Spikes lift the smoothed KL above the limit while most raw values sit below it (a finger-spin run
    once read "approx_kl 0.0196 (median where above) > 0.02"): the quoted level is the smoothed one."""
    kl = np.where(np.arange(N) % 5 == 0, 0.15, 0.04)
    (finding,) = dg.kl_too_high(seed(approx_kl=kl))
    assert np.median(kl) < 0.05 < finding.value == pytest.approx(0.062, abs=0.004)
    assert finding.evidence.startswith(f"approx_kl {finding.value:.3g} (smoothed, median where above) > 0.05")


def test_a_kl_spike_is_found_and_named_with_its_step():
    kl = np.full(N, 0.01)
    kl[120] = 0.2
    (finding,) = dg.kl_spikes(seed(approx_kl=kl))
    assert finding.steps == (int(STEPS[120]),) * 2 and "20x the seed's median" in finding.evidence
    assert dg.kl_spikes(seed(approx_kl=np.full(N, 0.01))) == []


def test_a_kl_spike_is_a_warning_where_the_return_dips_after_it_and_a_note_where_it_holds():
    kl = np.full(N, 0.01)
    kl[120] = 0.2
    (held,) = dg.kl_spikes(seed(approx_kl=kl))
    assert held.severity == "note" and held.what == "KL spikes, and the return held" and held.try_options == ()
    ret = healthy_curves()["episodic_return"]
    dipped = ret.copy()
    dipped[121:126] -= 1500  # 5 iterations, 2.5% of training: within the 5% read after the spike
    (finding,) = dg.kl_spikes(seed(approx_kl=kl, episodic_return=dipped))
    curve = dg.smoothed(dipped)
    gain = curve.max() - dg.head(curve)
    expected = (curve[119] - curve[120:131].min()) / gain  # from the level before the spike, 5% of training on
    assert finding.severity == "warning" and finding.try_options == ("--lr 0.00015", "--target-kl 0.02")
    assert f"the smoothed return fell {expected:.0%} of the seed's gain" in finding.evidence
    assert dg.return_dip(seed(approx_kl=kl, episodic_return=dipped), STEPS[120]) == pytest.approx(expected)
    late = dipped.copy()
    late[121:126] = ret[121:126]
    late[150:155] -= 1500  # 30 iterations later: not the spike's doing
    assert dg.kl_spikes(seed(approx_kl=kl, episodic_return=late))[0].severity == "note"
    # without returns to read, a spike stays a warning
    unread = seed(approx_kl=kl)
    del unread.curves["episodic_return"]
    assert dg.kl_spikes(unread)[0].severity == "warning"


def test_a_kl_spike_is_judged_once_the_return_after_it_is_known():
    """Live (or in a run cut short), a spike in the last 5% of the steps so far waits for its window;
    once the run has logged its last iteration, every spike is judged on what follows it."""
    kl = np.full(N, 0.01)
    kl[N - 3] = 0.2
    assert dg.kl_spikes(seed(approx_kl=kl, config={"total_steps": int(STEPS[-1]) * 2})) == []
    assert dg.kl_spikes(seed(approx_kl=kl))[0].severity == "note"  # complete: judged on the 2 rows after it
    assert dg.kl_spikes(seed(approx_kl=kl, config={"total_steps": int(STEPS[-1]) + 2047}))[0].severity == "note"
    early = np.full(N, 0.01)
    early[2] = 0.2
    no_return_yet = seed(approx_kl=early)
    no_return_yet.curves["episodic_return"] = (STEPS[10:], healthy_curves()["episodic_return"][10:])
    assert dg.kl_spikes(no_return_yet)[0].severity == "note"  # read from the first return after it


def test_updates_cut_short_only_under_target_kl():
    fraction = np.full(N, 0.3)
    (finding,) = dg.updates_cut_short(seed(update_fraction=fraction, config={"target_kl": 0.01}))
    assert "update_fraction < 1 in 100% of iterations" in finding.evidence
    assert finding.try_options == ("--lr 0.00015", "--target-kl 0.02")
    assert dg.updates_cut_short(seed(update_fraction=fraction)) == []  # no --target-kl: nothing to say


def test_clipfrac_high_over_the_second_half():
    assert dg.clipfrac_high(seed(clipfrac=np.full(N, 0.45)))[0].value == pytest.approx(0.45)
    assert dg.clipfrac_high(seed(clipfrac=np.r_[np.full(N // 2, 0.5), np.full(N // 2, 0.1)])) == []


def test_std_rising_is_the_dmc_case_and_suggests_no_entropy_bonus():
    std = np.linspace(1.0, 1.8, N)
    (finding,) = dg.std_rising(seed(action_std=std, config={"ent_coef": 0.01}))
    assert finding.try_options == ("--ent-coef 0",) and "with --ent-coef 0.01" in finding.evidence
    assert dg.std_rising(seed(action_std=np.linspace(1.0, 0.3, N))) == []


def test_negative_entropy_early_but_not_late():
    early = np.r_[np.linspace(2, -1, 40), np.full(N - 40, -1.0)]
    t = np.linspace(0, 1, N)
    slow = 50 + 2500 * t ** 2  # at 16% of training, 3% of its gain: the actor narrowed before it learned
    assert dg.entropy_negative_early(seed(entropy=early, episodic_return=slow))[0].rule == "entropy_early"
    late = np.r_[np.full(150, 1.0), np.full(N - 150, -0.5)]  # negative at 75%: a healthy narrowing
    assert dg.entropy_negative_early(seed(entropy=late)) == []
    # the value is the smoothed entropy the rule read, not the raw point (0.05 here: above 0)
    noisy = np.r_[np.full(20, 1.0), np.resize([-0.6, 0.05], N - 20)]
    (finding,) = dg.entropy_negative_early(seed(entropy=noisy, episodic_return=slow))
    assert finding.steps[0] == STEPS[27] and noisy[27] > 0 > finding.value == pytest.approx(-0.02)


def test_negative_entropy_early_once_the_return_is_earned_and_kept_is_a_task_learned_fast():
    """DMC cartpole-swingup (847 at 1M frames): the entropy turns negative at 27% of training with 90%
    of the return's gain made, and the gain is kept: no finding. Narrowing at the peak of a return that
    then collapses (the tuning study's run) still is one."""
    t = np.linspace(0, 1, N)
    early = np.r_[np.linspace(2, -1, 40), np.full(N - 40, -1.0)]
    fast = 50 + 2500 * (1 - np.exp(-15 * t))
    assert dg.entropy_negative_early(seed(entropy=early, episodic_return=fast)) == []
    crashed = np.where(t < 0.17, 50 + 2500 * t / 0.17, 2550 - 2300 * (t - 0.17) / 0.83)
    assert dg.entropy_negative_early(seed(entropy=early, episodic_return=crashed))[0].rule == "entropy_early"
    unlogged = seed(entropy=early, episodic_return=fast)
    del unlogged.curves["episodic_return"]  # no return to read: the entropy alone decides
    assert dg.entropy_negative_early(unlogged)[0].rule == "entropy_early"


def test_value_loss_exploding_and_rising():
    exploding = np.full(N, 0.5)
    exploding[100:110] = 5000.0
    lost = healthy_curves()["explained_variance"].copy()
    lost[100:110] = -3.0  # the critic stops explaining the returns where its loss explodes
    assert dg.value_loss_exploding(seed(value_loss=exploding, explained_variance=lost))[0].rule == "vloss_explode"
    unlogged = seed(value_loss=exploding)
    del unlogged.curves["explained_variance"]  # older CSVs: the loss alone decides
    assert dg.value_loss_exploding(unlogged)[0].rule == "vloss_explode"
    rising = np.r_[np.full(100, 0.5), np.linspace(0.5, 10, 100)]
    assert dg.value_loss_exploding(seed(value_loss=rising))[0].rule == "vloss_rise"
    assert dg.value_loss_exploding(seed(value_loss=np.linspace(2.0, 0.5, N))) == []


def test_a_value_loss_that_rises_far_below_the_untrained_critics_is_no_rise():
    """DMC cartpole-swingup: 9e-6 at 10-50% of training, 2.4e-4 late (26x), where the first iterations
    read 1-10; without reward normalisation (HalfCheetah) the late loss passes its first level: 4.9-6.9x."""
    t = np.linspace(0, 1, N)
    cartpole = np.where(t < 0.05, 5.0, np.where(t < 0.6, 9e-6, 2.4e-4))
    assert dg.value_loss_exploding(seed(value_loss=cartpole)) == []
    unscaled = np.where(t < 0.05, 8.0, np.where(t < 0.6, 10.0, 45.0))
    (finding,) = dg.value_loss_exploding(seed(value_loss=unscaled))
    assert finding.rule == "vloss_rise" and "4.5x its level at 10-50% of training (10)" in finding.evidence
    assert "above the untrained critic's (8)" in finding.evidence


def test_a_value_loss_peak_where_the_critic_still_explains_the_returns_is_no_explosion():
    """DMC cartpole-swingup, --preset tuned (847 at 1M frames): the value loss settles near 3e-6 once the
    pole balances and peaks at 0.012 as the swing-up is learned, 3900x its median, with explained
    variance 0.93-0.99 there: the targets change as the policy improves."""
    t = np.linspace(0, 1, N)
    loss = 3e-6 + 0.012 * np.exp(-((t - 0.5) / 0.02) ** 2)
    ev = np.full(N, 0.96)
    assert dg.value_loss_exploding(seed(value_loss=loss, explained_variance=ev)) == []
    ev[95:106] = 0.1  # the same peak with the critic lost there
    assert dg.value_loss_exploding(seed(value_loss=loss, explained_variance=ev))[0].rule == "vloss_explode"


def test_a_critic_that_explains_nothing():
    (bad,) = dg.critic_not_learning(seed(explained_variance=np.full(N, -0.3), config={"norm_reward": False}))
    assert bad.severity == "problem" and bad.try_options[0] == "--norm-reward"
    assert dg.critic_not_learning(seed(explained_variance=np.full(N, 0.2)))[0].severity == "warning"


def test_the_return_collapse_and_the_kl_where_it_happened():
    t = np.arange(N)
    ret = np.where(t < 100, 10 + 20 * t, 2010 - 60 * (t - 100)).clip(0) + 10
    kl = np.full(N, 0.01)
    kl[95:110] = 0.08
    (finding,) = dg.return_collapse(seed(episodic_return=ret, approx_kl=kl))
    assert finding.severity == "problem" and "best" in finding.evidence
    assert "approx_kl up to 0.08 there (8.0x its median)" in finding.evidence
    merged = dg.diagnose_seeds([seed(episodic_return=ret, approx_kl=kl)])
    collapse = next(f for f in merged if f.rule == "collapse")
    assert any("KL spikes" in c or "policy changes too fast" in c for c in collapse.coincides)


def test_a_return_that_keeps_rising_is_no_collapse():
    assert dg.return_collapse(seed()) == []
    assert dg.return_collapse(seed(episodic_return=np.linspace(-500, -100, N))) == []  # negative, improving


def test_divergence_from_error_txt_and_infinite_values():
    assert dg.diverged(seed(error="policy_loss became nan in iteration 3; kept the state after iteration 2"))
    assert dg.diverged(seed(value_loss=np.r_[np.full(N - 1, 0.5), np.inf]))[0].metric == "value_loss"
    assert dg.diverged(seed(error="could not write progress.csv: No space left on device")) == []


def test_too_few_episodes_is_a_note():
    (finding,) = dg.few_episodes(seed(episodes=np.r_[np.zeros(N - 3), np.ones(3)]))
    assert finding.severity == "note" and "3 episode(s) ended" in finding.evidence


def test_std_collapsing_while_the_return_is_low_is_premature_convergence():
    stuck = seed(name="1", action_std=0.61 * np.exp(-8 * np.linspace(0, 1, N)),
                 episodic_return=np.full(N, 60.0) + np.random.default_rng(1).normal(0, 5, N))
    (finding,) = dg.std_collapse([seed(name="0"), stuck])
    assert finding.seeds == ("1",) and "premature" in finding.meaning
    assert dg.std_collapse([seed(name="0"), seed(name="1")]) == []


def test_two_groups_is_the_best_cut_by_brute_force():
    rng = np.random.default_rng(3)
    for returns in (rng.normal(0, 1, 30), np.r_[rng.normal(250, 5, 26), rng.normal(930, 30, 24)], rng.random(11)):
        ordered, n = np.sort(returns), len(returns)
        total = np.sum((ordered - ordered.mean()) ** 2)
        spread = {k: np.sum((ordered[:k] - ordered[:k].mean()) ** 2) + np.sum((ordered[k:] - ordered[k:].mean()) ** 2)
                  for k in range(int(np.ceil(0.2 * n)), n - int(np.ceil(0.2 * n)) + 1)}
        cuts = {k: 1 - within / total for k, within in spread.items()}
        best = max(cuts, key=cuts.get)
        assert dg.two_groups(returns) == (pytest.approx(cuts[best], abs=1e-9), best)
    assert dg.two_groups(np.full(30, 7.0)) == (0.0, 0) and dg.two_groups([1.0]) == (0.0, 0)


def test_an_evaluation_that_splits_in_two_is_a_note_with_both_groups():
    rng = np.random.default_rng(0)
    walker = np.r_[rng.normal(250, 5, 26), rng.normal(930, 30, 24)]  # crawling and walking, as measured
    (finding,) = dg.evaluation_split(replace(seed(), evaluation=tuple(walker), evaluation_step=999_424))
    assert finding.severity == "note" and finding.rule == "eval_split" and finding.value > 0.95
    low, high = np.sort(walker)[:26].mean(), np.sort(walker)[26:].mean()
    assert f"26 of 50 episodes average {low:.4g}" in finding.evidence and f"the other 24 {high:.4g}" in finding.evidence
    assert "at step 999k" in finding.evidence and f"the mean {walker.mean():.4g} describes neither" in finding.evidence
    for returns in (rng.uniform(0, 1000, 50),  # spread out, one group
                    walker[::5],  # 10 episodes: too few to judge
                    np.r_[np.full(25, 1000.0), np.full(25, 1001.0)],  # two groups 0.1% apart
                    np.r_[walker[:-1], np.nan]):
        assert dg.evaluation_split(replace(seed(), evaluation=tuple(returns))) == [], returns
    assert dg.evaluation_split(seed()) == []  # no evaluation


def test_one_group_of_20_or_50_episodes_rarely_reads_as_two():
    """The calibration the threshold's source quotes: draws from one distribution (no split) exceed
    eval_split in under 1% of 1000 evaluations of 20 episodes, and never in 50."""
    rng = np.random.default_rng(7)
    for n, limit in ((20, 0.01), (50, 0.0)):
        for draw in (rng.standard_normal, rng.random, rng.exponential, lambda size: rng.lognormal(0, 1, size)):
            shares = np.array([dg.two_groups(draw(size=n))[0] for _ in range(1000)])
            assert (shares >= dg.THRESHOLDS["eval_split"].value).mean() <= limit, (n, draw)


def test_diagnose_reads_the_final_checkpoints_up_to_date_eval_json(tmp_path):
    folder = write_run(tmp_path, "evaluated", {"0": healthy_curves()})
    seed_dir = folder / "seed_0"
    (seed_dir / "checkpoint.pt").write_bytes(b"")
    returns = [250.0 + k for k in range(26)] + [930.0 + k for k in range(24)]

    def rules(evaluated: str = "checkpoint.pt", stale: bool = False) -> list[str]:
        (seed_dir / "eval.json").write_text(json.dumps({"checkpoint": str(seed_dir / evaluated), "global_step": 409600,
                                                        "mean": float(np.mean(returns)), "returns": returns}))
        if stale:
            os.utime(seed_dir / "eval.json", (1, 1))  # older than the checkpoint
        result = invoke("diagnose", folder, "--json")
        assert result.exit_code == 0, result.output
        return [f["rule"] for f in json.loads(result.output)["runs"][0]["findings"]]

    assert rules() == ["eval_split"]
    table = " ".join(invoke("diagnose", folder).output.split())
    assert "the evaluation splits in two: some start states fail" in table
    assert "26 of 50 episodes average 262.5" in table
    assert rules("best.pt") == []  # not the final checkpoint's
    assert rules(stale=True) == []


def test_seeds_that_disagree_are_named():
    stalled = seed(name="2", episodic_return=np.linspace(50, 300, N))
    (finding,) = dg.seeds_disagree([seed(name="0"), seed(name="1"), stalled])
    assert finding.seeds == ("2",) and finding.try_options == ("--seeds 6",)
    assert "seed 2 stall" in finding.what
    assert dg.seeds_disagree([seed(name="0"), seed(name="1")]) == []


def test_findings_of_one_rule_merge_across_seeds_most_severe_first():
    kl = np.where(np.arange(N) > 60, 0.08, 0.008)
    findings = dg.diagnose_seeds([seed(name="0", approx_kl=kl), seed(name="1", approx_kl=kl * 1.5),
                                  seed(name="2", clipfrac=np.full(N, 0.45))])
    assert [f.rule for f in findings][:2] == ["kl_high", "clipfrac_high"]
    assert findings[0].seeds == ("0", "1") and findings[0].evidence.startswith("seed 1: ")  # the worst seed


def test_one_rule_at_two_severities_is_two_findings_with_their_own_seeds():
    kl = np.full(N, 0.01)
    kl[120] = 0.2
    ret = healthy_curves()["episodic_return"]
    dipped = ret.copy()
    dipped[121:126] -= 1500
    findings = dg.diagnose_seeds([seed(name="0", approx_kl=kl, episodic_return=dipped),
                                  seed(name="1", approx_kl=kl), seed(name="2", approx_kl=kl)])
    assert [(f.rule, f.severity, f.seeds) for f in findings] == [("kl_spike", "warning", ("0",)),
                                                                 ("kl_spike", "note", ("1", "2"))]


def crafted_seed(rng: np.random.Generator, name: str) -> SeedCurves:
    """A seed whose CSV an adversary wrote: columns of zeros, infinities, 1e300, denormals, one row,
    repeated steps, missing metrics, nonsense config values, an evaluation of any length."""
    n = int(rng.choice([1, 2, 3, 5, 10, 11, 19, 30, 200]))
    steps = np.sort(rng.integers(-10, 10 ** 6, n)).astype(float) if rng.random() < 0.8 else np.zeros(n)

    def column(size: int) -> np.ndarray:
        makers = (lambda: rng.normal(0, 1, size), lambda: np.zeros(size), lambda: np.full(size, 1e300),
                  lambda: rng.normal(0, 1, size) * 1e-300, lambda: -np.abs(rng.normal(0, 100, size)),
                  lambda: np.where(rng.random(size) < 0.3, np.inf, rng.random(size)),
                  lambda: np.where(rng.random(size) < 0.3, -np.inf, rng.random(size)),
                  lambda: np.exp(rng.normal(0, 20, size)))
        return makers[int(rng.integers(0, len(makers)))]()

    metrics = list(healthy_curves())
    curves = {m: (steps, column(n)) for m in metrics if rng.random() > 0.15}
    configs = [{}, {"total_steps": int(steps[-1])}, {"total_steps": 3 * int(abs(steps[-1])) + 1},
               {"total_steps": 0, "lr": 0.0, "update_epochs": 0, "ent_coef": 1e9, "target_kl": 0.01}]
    config = configs[int(rng.integers(0, len(configs)))]
    evaluation = tuple(column(int(rng.choice([1, 19, 20, 50])))) if rng.random() < 0.5 else ()
    return SeedCurves("Hopper-v5", "crafted", name, curves, dict(config), evaluation=evaluation,
                      evaluation_step=int(steps[-1]))


def test_crafted_curves_never_raise_and_always_serialise():
    """Before: a std of 0 at the start (std_rising), infinite episode counts (few_episodes), a KL median
    of 0 (collapse) and fewer than 2 settled value-loss rows (vloss) raised, and so did `ppo diagnose`."""
    rng = np.random.default_rng(1)
    with np.errstate(all="ignore"):
        for _ in range(1500):
            seeds = [crafted_seed(rng, str(k)) for k in range(int(rng.integers(1, 4)))]
            findings = dg.diagnose_seeds(seeds)
            json.dumps([f.to_dict() for f in findings], allow_nan=False)
    assert dg.std_rising(seed(action_std=np.zeros(N))) == []
    (few,) = dg.few_episodes(seed(episodes=np.full(N, np.inf)))
    assert "0 episode(s) ended" in few.evidence  # the infinite counts are the non_finite finding's


def test_every_threshold_has_a_meaning_and_a_source():
    for name, threshold in dg.THRESHOLDS.items():
        assert threshold.meaning and threshold.source, name


def test_live_diagnosis_reports_a_new_finding_once():
    live = dg.LiveDiagnosis({"total_steps": int(STEPS[-1]), "lr": 3e-4}, every=10)
    curves = healthy_curves(approx_kl=np.full(N, 0.06))
    found = []
    for k in range(N):
        row = {"global_step": int(STEPS[k]), "iteration": k + 1, **{m: float(v[k]) for m, v in curves.items()}}
        row["episodic_return"] = None if k % 3 else row["episodic_return"]  # iterations where no episode ended
        found += [f.rule for f in live.add(row)]
    assert found == ["kl_high"]  # at the 10th row, and not again


def test_live_diagnosis_reports_every_rule_that_fires_at_one_check():
    """Two rules new at the same check are two findings, most severe first (one used to hide the other)."""
    live = dg.LiveDiagnosis({"total_steps": int(STEPS[-1]), "lr": 3e-4}, every=10)
    std = 0.6 * np.exp(0.1 * np.arange(N))
    kl = np.where(np.arange(N) % 5 == 0, 0.06, 0.01)  # above kl_high in 20% of iterations: a warning
    curves = healthy_curves(approx_kl=kl, action_std=std, entropy=3 * (np.log(std) + 1.4189))
    found = [[(f.rule, f.severity) for f in live.add({"global_step": int(STEPS[k]), "iteration": k + 1,
                                                      **{m: float(v[k]) for m, v in curves.items()}})]
             for k in range(N)]
    first = next(k for k, new in enumerate(found) if new)
    assert first == 9 and {("std_rising", "problem"), ("kl_high", "warning")} <= set(found[first])
    severities = [dg.SEVERITIES.index(severity) for _, severity in found[first]]
    assert severities == sorted(severities) and found[first][0][1] == "problem"


def test_live_diagnosis_reports_a_finding_again_when_it_grows_more_severe():
    """A KL spike after which the return held is a note; a later one that costs return is news."""
    live = dg.LiveDiagnosis({"total_steps": int(STEPS[-1]), "lr": 3e-4}, every=10)
    kl = np.full(N, 0.01)
    kl[[50, 150]] = 0.2
    ret = healthy_curves()["episodic_return"]
    ret[151:156] -= 1500
    curves = healthy_curves(approx_kl=kl, episodic_return=ret)
    found = []
    for k in range(N):
        found += [(k + 1, f.rule, f.severity) for f in live.add({"global_step": int(STEPS[k]), "iteration": k + 1,
                                                                   **{m: float(v[k]) for m, v in curves.items()}})]
    assert found == [(70, "kl_spike", "note"), (170, "kl_spike", "warning")]  # once each window has passed


# ----------------------------------------------------------------------------- the command


def write_run(root: Path, run: str, seeds: dict[str, dict[str, np.ndarray]], config: dict | None = None) -> Path:
    """Run folders as `ppo train` writes them (progress.csv and config.json per seed)."""
    folder = root / "Hopper-v5" / run
    for name, curves in seeds.items():
        seed_dir = folder / f"seed_{name}"
        seed_dir.mkdir(parents=True)
        frame = pd.DataFrame({"global_step": STEPS.astype(int), "iteration": np.arange(1, N + 1), **curves})
        frame.to_csv(seed_dir / "progress.csv", index=False)
        (seed_dir / "config.json").write_text(json.dumps({"env_id": "Hopper-v5", "seed": int(name),
                                                          "total_steps": int(STEPS[-1]), **(config or {})}))
    return folder


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False, env={"COLUMNS": "400"})


def test_the_command_prints_a_table_per_run_and_a_healthy_run_in_one_line(tmp_path):
    write_run(tmp_path, "healthy", {"0": healthy_curves(), "1": healthy_curves()})
    write_run(tmp_path, "hot", {"0": healthy_curves(approx_kl=np.full(N, 0.06)),
                                "1": healthy_curves(approx_kl=np.full(N, 0.08))})
    result = invoke("diagnose", tmp_path)
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "Hopper-v5 / healthy (2 seeds): healthy, no finding" in text
    assert "Hopper-v5 / hot (2 seeds): 1 problem(s)" in text and "policy changes too fast" in text
    assert "--lr 0.0001" in text and "--target-kl 0.02" in text


def test_json_schema(tmp_path):
    run = write_run(tmp_path, "hot", {"0": healthy_curves(approx_kl=np.full(N, 0.06))})
    result = invoke("diagnose", run, "--json")
    assert result.exit_code == 0
    data = json.loads(result.output)
    (report,) = data["runs"]
    assert set(report) == {"env", "run", "seeds", "healthy", "findings"} and report["healthy"] is False
    (finding,) = report["findings"]
    assert set(finding) == {"rule", "severity", "what", "metric", "seeds", "steps", "value", "reference", "evidence",
                            "meaning", "try", "coincides"}
    assert finding["rule"] == "kl_high" and finding["seeds"] == ["0"] and finding["try"][0] == "--lr 0.0001"


def test_plot_shades_each_finding(tmp_path):
    run = write_run(tmp_path, "hot", {"0": healthy_curves(approx_kl=np.full(N, 0.06))})
    result = invoke("diagnose", run, "--plot", "--out", tmp_path / "fig.png")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "fig.png").stat().st_size > 20_000 and "figure:" in result.output
    marks, metrics = dg.highlights(dg.diagnose([run])[0])
    assert [m.metric for m in marks] == ["approx_kl"] and "approx_kl" in metrics


def test_the_command_reads_crafted_csvs_without_a_traceback(tmp_path):
    flat = healthy_curves(action_std=np.zeros(N), entropy=np.zeros(N), approx_kl=np.zeros(N))
    write_run(tmp_path, "zeros", {"0": flat})
    write_run(tmp_path, "infinite", {"0": healthy_curves(episodes=np.full(N, np.inf))})
    result = invoke("diagnose", tmp_path)
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "Hopper-v5 / zeros (1 seed)" in text and "training diverged (NaN or infinite values)" in text


def test_bad_input_is_the_plot_commands_error(tmp_path):
    result = invoke("diagnose", tmp_path)
    assert result.exit_code == 2 and "no progress.csv or episodes.csv found below" in " ".join(result.output.split())
    (tmp_path / "x" / "seed_0").mkdir(parents=True)
    (tmp_path / "x" / "seed_0" / "progress.csv").write_text("not,a\ncsv")
    result = invoke("diagnose", tmp_path)
    assert result.exit_code == 2 and "every one found was skipped" in " ".join(result.output.split())
    assert invoke("diagnose").exit_code == 2


def test_a_seed_that_failed_for_another_reason_is_a_problem_with_its_reason():
    (finding,) = dg.failed(seed(error="could not write progress.csv: No space left on device; kept the rows"))
    assert finding.severity == "problem" and "No space left on device" in finding.evidence
    assert dg.failed(seed(error="approx_kl became inf in iteration 2; kept the state after iteration 1")) == []
    assert dg.failed(seed()) == []


def test_a_run_that_diverged_before_its_first_row_is_still_diagnosed(tmp_path):
    seed_dir = tmp_path / "Hopper-v5" / "default" / "seed_0"
    seed_dir.mkdir(parents=True)
    (seed_dir / "progress.csv").write_text("global_step,iteration,approx_kl\n")  # the header, no row
    (seed_dir / "config.json").write_text(json.dumps({"env_id": "Hopper-v5", "seed": 0}))
    (seed_dir / "error.txt").write_text("approx_kl became inf in iteration 1; kept the state after iteration 0\n")
    result = invoke("diagnose", tmp_path, "--json")
    assert result.exit_code == 0, result.output
    (report,) = json.loads(result.output[result.output.index("{"):])["runs"]
    assert [f["rule"] for f in report["findings"]] == ["non_finite", "few_episodes"]
    assert "approx_kl became inf in iteration 1" in report["findings"][0]["evidence"]


def test_the_readme_has_the_thresholds_table_of_the_code():
    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    assert dg.thresholds_table() in readme


def test_ppo_train_shows_live_findings_and_goes_on(tmp_path):
    """--quiet prints a line per new finding; the run finishes all the same.

    At --lr 0.2 the KL is in the hundreds; whether it reads as a warning or a problem, and which other
    rules fire beside it, depends on the machine's float kernels, so the test names the rule only."""
    result = CliRunner().invoke(cli, ["train", "tests.fake_envs:PointEnv", "--total-steps", str(256 * 20),
                                      "--num-envs", "1", "--num-steps", "256", "--num-minibatches", "4",
                                      "--update-epochs", "20", "--lr", "0.2", "--hidden-sizes", "16,16", "--quiet",
                                      "--out", str(tmp_path)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert re.search(r"seed 0 finding: (problem|warning): policy changes too fast \(approx_kl .*?\); try --lr", text)
    assert "seed 0 step 5120/5120" in text


def test_run_rule_findings_merge_across_seeds_too():
    low = dict(action_std=0.61 * np.exp(-8 * np.linspace(0, 1, N)), episodic_return=np.full(N, 60.0))
    findings = dg.diagnose_seeds([seed(name="0"), seed(name="1", **low), seed(name="2", **low)])
    assert [f.seeds for f in findings if f.rule == "std_collapse"] == [("1", "2")]
