"""``ppo plot``: synthetic CSV trees with known values; numbers compared with hand computations."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from ppo_cli.cli import cli
from ppo_cli.diagnostics import PROGRESS_COLUMNS
from ppo_cli.plots import DEFAULT_METRICS, FORMATS, X_AXES
from ppo_cli.plots.data import PlotError, align, load
from ppo_cli.plots.figure import draw_figure
from ppo_cli.plots.report import plot_runs
from ppo_cli.plots.stats import aggregate_curves, final_return, iqm, stratified_bootstrap_ci, summarize, trim_mean


def write_seed(root: Path, env: str, run: str, seed: int, steps, returns=None, config: bool = True,
               **columns) -> Path:
    """A seed folder as ``ppo train`` writes it; ``returns``/``columns`` give per-row values (None: empty)."""
    folder = root / env / run / f"seed_{seed}"
    folder.mkdir(parents=True)
    if config:
        (folder / "config.json").write_text(json.dumps({"env_id": env, "seed": seed}))
    n = len(steps)
    values = {"global_step": steps, "iteration": range(1, n + 1), "time_s": [s / 100 for s in steps],
              "episodic_return": returns if returns is not None else [float(s) for s in steps],
              "value_loss": [1.0] * n, "entropy": [0.5] * n, "approx_kl": [0.01] * n, "clipfrac": [0.1] * n,
              "explained_variance": [0.9] * n, "action_std": [1.0] * n, **columns}
    frame = pd.DataFrame({c: values.get(c, [0.0] * n) for c in PROGRESS_COLUMNS})
    frame.to_csv(folder / "progress.csv", index=False)
    ends = [(s, r) for s, r in zip(steps, values["episodic_return"]) if r is not None and not pd.isna(r)]
    pd.DataFrame(ends, columns=["global_step", "return"]).assign(length=10).to_csv(folder / "episodes.csv",
                                                                                   index=False)
    return folder


def curve(curves: pd.DataFrame, metric: str, run: str | None = None) -> pd.DataFrame:
    rows = curves[(curves["metric"] == metric) & ((curves["run"] == run) if run else True)]
    return rows.sort_values("x").reset_index(drop=True)


# ---- statistics ---------------------------------------------------------------------------------

def test_trim_mean_is_scipys_definition():
    # scipy.stats.trim_mean(x, 0.25): cut int(0.25 * n) sorted values from each end
    assert trim_mean([7, 1, 100, 3, 0, 5, 2, 8, 6, 4]) == pytest.approx(np.mean([2, 3, 4, 5, 6, 7]))
    assert iqm([10.0, 1.0, 3.0, 2.0]) == pytest.approx(2.5)  # mean of the middle two
    assert iqm([1.0, 2.0, 30.0]) == pytest.approx(11.0)  # fewer than 4 values: nothing cut
    assert iqm([5.0]) == 5.0
    rows = np.array([[4.0, 1.0, 3.0, 2.0], [0.0, 0.0, 8.0, 100.0]])
    np.testing.assert_allclose(iqm(rows, axis=1), [2.5, 4.0])


def test_stratified_bootstrap_resamples_within_strata_and_is_seeded():
    # Stratified: every resample holds three values of the first stratum and one of the second.
    low, high = stratified_bootstrap_ci([np.zeros(3), np.array([10.0])], np.mean)
    assert low == high == 2.5
    values = np.array([1.0, 2.0, 3.0, 10.0, 4.0, 6.0])
    first = stratified_bootstrap_ci([values], rng=np.random.default_rng(7))
    assert first == stratified_bootstrap_ci([values], rng=np.random.default_rng(7))
    assert first[0] <= iqm(values) <= first[1] and first[0] < first[1]
    assert all(math.isnan(v) for v in stratified_bootstrap_ci([np.array([3.0])]))


def test_final_return_is_the_mean_over_the_last_tenth_of_steps():
    steps = np.arange(1, 11) * 100.0
    returns = np.arange(1, 11, dtype=float)
    assert final_return(steps, returns, 1000.0) == pytest.approx((9 + 10) / 2)  # steps >= 900
    returns[-2:] = np.nan  # no episode ended in the window: the last return before it
    assert final_return(steps, returns, 1000.0) == 8.0
    assert math.isnan(final_return(steps, np.full(10, np.nan), 1000.0))


# ---- data: alignment and aggregation ------------------------------------------------------------

def test_means_on_the_grid_equal_hand_computed_ones(tmp_path):
    write_seed(tmp_path, "Hopper-v5", "a", 0, [100, 200, 300], value_loss=[1.0, 2.0, 3.0])
    write_seed(tmp_path, "Hopper-v5", "a", 1, [100, 200, 300], value_loss=[3.0, 6.0, 5.0])
    curves = aggregate_curves(align(load([tmp_path]).table, ["value_loss"]))
    got = curve(curves, "value_loss")
    np.testing.assert_allclose(got["x"], [100, 200, 300])
    np.testing.assert_allclose(got["mean"], [2.0, 4.0, 4.0])
    assert list(got["seeds"]) == [2, 2, 2]
    # Two seeds: the 2.5% / 97.5% percentiles of the bootstrap means are the two seeds' values.
    np.testing.assert_allclose(got["ci_low"], [1.0, 2.0, 3.0])
    np.testing.assert_allclose(got["ci_high"], [3.0, 6.0, 5.0])
    again = aggregate_curves(align(load([tmp_path]).table, ["value_loss"]))
    pd.testing.assert_frame_equal(curves, again)


def test_unequal_length_seeds_align_without_extrapolation(tmp_path):
    # seed 0 logs 100..400 (value = step / 10); seed 1 logs only 150 and 250 (values 100, 200).
    write_seed(tmp_path, "Hopper-v5", "a", 0, [100, 200, 300, 400], value_loss=[10.0, 20.0, 30.0, 40.0])
    write_seed(tmp_path, "Hopper-v5", "a", 1, [150, 250], value_loss=[100.0, 200.0])
    aligned = align(load([tmp_path]).table, ["value_loss"])
    got = curve(aggregate_curves(aligned), "value_loss")
    np.testing.assert_allclose(got["x"], [100, 150, 200, 250, 300, 400])  # the union of logged steps
    np.testing.assert_allclose(got["mean"], [10, (15 + 100) / 2, (20 + 150) / 2, (25 + 200) / 2, 30, 40])
    assert list(got["seeds"]) == [1, 2, 2, 2, 1, 1]
    assert got.loc[got["seeds"] == 1, ["ci_low", "ci_high"]].isna().all().all()  # one seed: no band
    assert aligned[aligned["seed"] == "1"]["x"].tolist() == [150, 200, 250]


def test_missing_returns_are_bridged_and_smoothing_is_a_trailing_mean(tmp_path):
    write_seed(tmp_path, "Hopper-v5", "a", 0, [100, 200, 300, 400], returns=[1.0, None, 3.0, 5.0],
               value_loss=[1.0, 2.0, 3.0, 4.0])
    table = load([tmp_path]).table
    np.testing.assert_allclose(curve(aggregate_curves(align(table, ["episodic_return"])), "episodic_return")["mean"],
                               [1.0, 2.0, 3.0, 5.0])
    smoothed = curve(aggregate_curves(align(table, ["value_loss"], smooth=2)), "value_loss")
    np.testing.assert_allclose(smoothed["mean"], [1.0, 1.5, 2.5, 3.5])


def test_time_axis_uses_time_s(tmp_path):
    write_seed(tmp_path, "Hopper-v5", "a", 0, [100, 200], value_loss=[1.0, 3.0], time_s=[2.0, 4.0])
    got = curve(aggregate_curves(align(load([tmp_path]).table, ["value_loss"], x="time")), "value_loss")
    np.testing.assert_allclose(got["x"], [2.0, 4.0])
    np.testing.assert_allclose(got["mean"], [1.0, 3.0])


def test_identity_from_folders_without_config_and_runs_told_apart_across_folders(tmp_path):
    write_seed(tmp_path / "a", "Hopper-v5", "default", 3, [100, 200], config=False)
    write_seed(tmp_path / "b", "Hopper-v5", "default", 3, [100, 200])
    table = load([tmp_path / "a", tmp_path / "b"]).table
    assert set(zip(table["env"], table["run"], table["seed"])) == {("Hopper-v5", "a/default", "3"),
                                                                  ("Hopper-v5", "b/default", "3")}
    assert len(load([tmp_path, tmp_path / "a"]).table["seed"].unique()) == 1  # the same files once


def test_an_eval_json_of_another_checkpoint_is_left_out_with_a_warning(tmp_path):
    """An eval.json that names best.pt (as ``ppo eval --best`` wrote it before best_eval.json) is not
    the final checkpoint's evaluation: ``--eval`` skips it, saying why, and reads the others."""
    for seed in (0, 1, 2):
        write_seed(tmp_path, "Hopper-v5", "a", seed, [100, 200])
    folder = tmp_path / "Hopper-v5" / "a"
    for seed, name in ((0, "checkpoint.pt"), (1, "best.pt")):
        (folder / f"seed_{seed}" / "eval.json").write_text(json.dumps(
            {"checkpoint": str(folder / f"seed_{seed}" / name), "global_step": 200, "mean": 10.0 + seed}))
    (folder / "seed_2" / "eval.json").write_text(json.dumps({"global_step": 200, "mean": None}))
    dataset = load([tmp_path], with_eval=True)
    assert dataset.evals["seed"].tolist() == ["0"] and dataset.evals["mean"].tolist() == [10.0]
    skipped = [w for w in dataset.warnings if "eval.json" in w]
    assert len(skipped) == 2
    assert "seed_1/eval.json: it evaluates" in skipped[0] and "best.pt" in skipped[0]
    assert "not the seed's checkpoint.pt" in skipped[0] and "mean return is None" in skipped[1]


def test_an_eval_json_with_an_infinite_step_or_count_is_left_out_with_a_warning(tmp_path):
    """Before, int() of the 1e400 that JSON reads as infinity raised OverflowError out of `ppo plot --eval`."""
    write_seed(tmp_path, "Hopper-v5", "a", 0, [100, 200])
    write_seed(tmp_path, "Hopper-v5", "a", 1, [100, 200])
    folder = tmp_path / "Hopper-v5" / "a"
    (folder / "seed_0" / "eval.json").write_text('{"global_step": 1e400, "mean": 10.0}')
    (folder / "seed_1" / "eval.json").write_text('{"global_step": 200, "mean": 10.0, "episodes": 1e400}')
    dataset = load([tmp_path], with_eval=True)
    assert dataset.evals.empty
    skipped = [w for w in dataset.warnings if "eval.json" in w]
    assert len(skipped) == 2 and all("OverflowError" in w for w in skipped)


def test_an_eval_json_older_than_its_checkpoint_is_kept_and_said(tmp_path):
    """After a resume that trained on, eval.json evaluates an earlier state: kept, with a warning."""
    write_seed(tmp_path, "Hopper-v5", "a", 0, [100, 200])
    seed_dir = tmp_path / "Hopper-v5" / "a" / "seed_0"
    (seed_dir / "eval.json").write_text(json.dumps({"checkpoint": str(seed_dir / "checkpoint.pt"),
                                                    "global_step": 100, "mean": 10.0}))
    (seed_dir / "checkpoint.pt").write_bytes(b"")
    assert not [w for w in load([tmp_path], with_eval=True).warnings if "older" in w]
    os.utime(seed_dir / "eval.json", (1, 1))
    dataset = load([tmp_path], with_eval=True)
    assert dataset.evals["mean"].tolist() == [10.0]
    (warning,) = [w for w in dataset.warnings if "older" in w]
    assert "eval.json is older than checkpoint.pt: it evaluates step 100" in warning and "ppo eval" in warning


# ---- summary -------------------------------------------------------------------------------------

def test_summary_final_return_and_iqm_equal_hand_computed_values(tmp_path):
    steps = [100 * k for k in range(1, 11)]
    finals = {0: 1.0, 1: 2.0, 2: 3.0, 3: 10.0}
    for seed, final in finals.items():  # returns 0 until step 800, then `final` at 900 and 1000
        write_seed(tmp_path, "Hopper-v5", "a", seed, steps, returns=[0.0] * 8 + [final, final])
    write_seed(tmp_path, "Hopper-v5", "short", 0, steps[:5], returns=[1.0, 2.0, 3.0, 4.0, 6.0])
    write_seed(tmp_path, "Hopper-v5", "short", 1, steps, returns=[0.0] * 8 + [None, 8.0])
    for seed in (0, 1):
        (tmp_path / "Hopper-v5" / "a" / f"seed_{seed}" / "eval.json").write_text(
            json.dumps({"global_step": 1000, "mean": 100.0 * (seed + 1), "returns": [1.0]}))
    dataset = load([tmp_path], with_eval=True)
    summary = summarize(dataset.table, dataset.evals).set_index("run")
    a = summary.loc["a"]
    assert (a["seeds"], a["seed_list"], a["steps_min"], a["steps_max"]) == (4, "0 1 2 3", 1000, 1000)
    assert a["final_mean"] == pytest.approx(4.0)
    assert a["final_std"] == pytest.approx(np.std([1, 2, 3, 10], ddof=1))
    assert a["final_iqm"] == pytest.approx(2.5)  # middle two of 1, 2, 3, 10
    assert 1.0 <= a["final_iqm_ci_low"] <= 2.5 <= a["final_iqm_ci_high"] <= 10.0
    assert (a["eval_seeds"], a["eval_mean"]) == (2, pytest.approx(150.0))
    short = summary.loc["short"]
    # seed 0 reached 500: its window is steps >= 450, the row at 500; seed 1: steps >= 900, where
    # only the row at 1000 has a return
    assert (short["steps_min"], short["steps_max"]) == (500, 1000)
    assert short["final_mean"] == pytest.approx((6.0 + 8.0) / 2)
    assert short["eval_seeds"] == 0 and math.isnan(short["eval_iqm"])
    again = summarize(dataset.table, dataset.evals).set_index("run")
    pd.testing.assert_frame_equal(summary, again)  # seeded bootstrap


# ---- figure --------------------------------------------------------------------------------------

def test_figure_draws_the_curve_numbers_in_labelled_panels(tmp_path):
    for env in ("Hopper-v5", "Walker2d-v5"):
        for run, offset in (("kl0.02", 0.0), ("kl0.07", 5.0)):
            write_seed(tmp_path, env, run, 0, [100, 200, 300], value_loss=[1.0 + offset, 2.0, 3.0])
            write_seed(tmp_path, env, run, 1, [100, 200], value_loss=[3.0 + offset, 4.0])
    metrics = ["episodic_return", "value_loss"]
    result = plot_runs([tmp_path], tmp_path / "plots" / "curves.png", metrics)
    assert result.figure_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert result.summary_path == tmp_path / "plots" / "summary.csv" and result.summary_path.is_file()

    figure = draw_figure(result.curves, metrics)
    axes = np.array(figure.axes).reshape(2, 2)
    assert [ax.get_title() for ax in axes.ravel()] == [
        "Hopper-v5: episodic return", "Walker2d-v5: episodic return",
        "Hopper-v5: value loss", "Walker2d-v5: value loss"]
    assert axes[1, 0].get_xlabel() == "environment steps" and axes[0, 0].get_ylabel() == "return (raw)"
    panel = axes[1, 1]  # Walker2d-v5, value loss: one line per run, in run order
    assert [line.get_label() for line in panel.lines] == ["kl0.02", "kl0.07"]
    np.testing.assert_allclose(panel.lines[0].get_xdata(), [100, 200, 300])
    np.testing.assert_allclose(panel.lines[0].get_ydata(), [2.0, 3.0, 3.0])  # hand means
    np.testing.assert_allclose(panel.lines[1].get_ydata(), [(6 + 8) / 2, 3.0, 3.0])
    # Readable: the legend lies right of every panel, and no two panels (with their labels) overlap.
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    legend = figure.legends[0].get_window_extent(renderer)
    boxes = [ax.get_tightbbox(renderer) for ax in figure.axes]
    assert all(legend.x0 >= box.x1 for box in boxes)
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])


# ---- command line --------------------------------------------------------------------------------

def invoke(*args):
    return CliRunner(env={"COLUMNS": "200"}).invoke(cli, [str(a) for a in args], catch_exceptions=False)


def test_cli_writes_figure_and_summary_and_prints_them(tmp_path):
    for seed in (0, 1):
        write_seed(tmp_path, "Hopper-v5", "kl0.02", seed, [100, 200, 300], returns=[1.0, 2.0, 3.0 + seed])
        write_seed(tmp_path, "Hopper-v5", "kl0.07", seed, [100, 200], returns=[1.0, 5.0])
    result = invoke("plot", tmp_path, "--metrics", "episodic_return,value_loss", "--smooth", "2")
    assert result.exit_code == 0, result.output
    figure = tmp_path / "plots" / "learning_curves.png"
    assert f"figure: {figure}" in result.output and f"summary: {figure.with_name('summary.csv')}" in result.output
    assert figure.is_file() and "Warning" not in result.output
    lines = [line for line in result.output.splitlines() if "Hopper-v5" in line]
    assert len(lines) == 2 and "kl0.02" in lines[0] and "3.50 +- 0.707   3.50 [3.00, 4.00]" in lines[0]
    assert "kl0.07" in lines[1] and " 200 " in lines[1] and "5.00 +- 0.00" in lines[1]

    out = tmp_path / "elsewhere" / "fig.svg"
    result = invoke("plot", tmp_path / "Hopper-v5", "--out", out, "--x", "time", "--eval")
    assert result.exit_code == 0, result.output
    assert out.read_text().lstrip().startswith("<?xml") and (out.parent / "summary.csv").is_file()
    assert "Evaluation: mean return" in result.output and "no eval.json found" in result.stderr


def test_cli_skips_malformed_and_empty_csvs_with_a_warning_naming_each(tmp_path):
    write_seed(tmp_path, "Hopper-v5", "good", 0, [100, 200])
    bad = write_seed(tmp_path, "Hopper-v5", "good", 1, [100, 200]) / "progress.csv"
    bad.write_text("global_step,value_loss\n100,1.0\n200,1.0,7,8\n")
    empty = write_seed(tmp_path, "Hopper-v5", "good", 2, [100, 200]) / "progress.csv"
    empty.write_text("")
    garbage = write_seed(tmp_path, "Hopper-v5", "good", 3, [100, 200]) / "episodes.csv"
    garbage.write_text("global_step,return,length\n100,abc,3\n")
    result = invoke("plot", tmp_path)
    assert result.exit_code == 0, result.output
    warnings = result.stderr.splitlines()
    assert len(warnings) == 3
    assert any(str(bad) in w and "not a valid CSV" in w for w in warnings)
    assert any(str(empty) in w and "empty file" in w for w in warnings)
    assert any(str(garbage) in w and "'abc' is not a number" in w for w in warnings)
    summary = pd.read_csv(tmp_path / "plots" / "summary.csv")
    assert summary["seeds"].tolist() == [4]  # seed 1 and 2 kept their episodes.csv returns


def test_cli_reads_a_run_still_being_written(tmp_path):
    folder = write_seed(tmp_path, "Hopper-v5", "a", 0, [100, 200])
    with open(folder / "progress.csv", "a") as f:
        f.write("300,3,3.0,1")  # cut off mid-row
    result = invoke("plot", tmp_path)
    assert result.exit_code == 0 and result.stderr == "", result.output
    assert pd.read_csv(tmp_path / "plots" / "summary.csv")["steps_max"].tolist() == [200]


@pytest.mark.parametrize("args, message", [
    (["{missing}"], "Directory '{missing}' does not exist"),
    (["{empty}"], "no progress.csv or episodes.csv found below {empty} (searched every sub-folder)"),
    (["{runs}", "--metrics", "return,entropy"],
     "Invalid value for '--metrics': unknown metric 'return'; valid metrics: time_s, sps, episodic_return"),
    (["{runs}", "--metrics", ","], "give at least one metric name"),
    (["{runs}", "--x", "walltime"], "Invalid value for '--x'"),
    (["{runs}", "--smooth", "0"], "Invalid value for '--smooth'"),
    (["{runs}", "--format", "jpg"], "Invalid value for '--format'"),
    (["{runs}", "--out", "fig.jpg"], "Invalid value for '--out': fig.jpg: the figure file must end in .png, .pdf"),
    (["{runs}", "--out", "fig.png", "--format", "pdf"], "--format pdf and --out fig.png disagree"),
    ([], "Missing argument 'FOLDER...'"),
])
def test_bad_input_is_one_clear_error_with_exit_code_2(tmp_path, args, message):
    paths = {"missing": tmp_path / "nowhere", "empty": tmp_path / "empty", "runs": tmp_path / "runs"}
    paths["empty"].mkdir()
    write_seed(paths["runs"], "Hopper-v5", "a", 0, [100, 200])
    result = invoke("plot", *[a.format(**paths) for a in args])
    assert result.exit_code == 2, result.output
    assert message.format(**paths) in " ".join(result.output.split()), result.output
    assert "Traceback" not in result.output and not (paths["runs"] / "plots").exists()


def test_only_unreadable_csvs_is_an_error_after_the_warnings(tmp_path):
    folder = tmp_path / "Hopper-v5" / "a" / "seed_0"
    folder.mkdir(parents=True)
    (folder / "progress.csv").write_text("")
    result = invoke("plot", tmp_path)
    assert result.exit_code == 2
    assert f"skipped {folder / 'progress.csv'}: empty file" in result.stderr
    assert "no readable progress.csv or episodes.csv below" in result.stderr


def test_cli_choices_match_the_library_and_plotting_never_imports_torch():
    options = {p.name: p for p in cli.commands["plot"].params}
    assert tuple(options["x_axis"].type.choices) == X_AXES
    assert tuple(options["fmt"].type.choices) == FORMATS
    assert ",".join(DEFAULT_METRICS) in options["metrics"].help
    code = ("import sys, ppo_cli.plots.report; "
            "sys.exit(bool({'torch', 'ppo_cli.trainer'} & set(sys.modules)))")
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0


def test_library_errors_name_the_parameter(tmp_path):
    with pytest.raises(PlotError) as info:
        load([tmp_path])
    assert info.value.param == "FOLDER..." and str(tmp_path) in str(info.value)
