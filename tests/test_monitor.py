"""Evaluation during training, best.pt, TensorBoard and videos (ppo_cli.monitor)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import imageio.v3 as iio
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from ppo_cli.cli import cli
from ppo_cli.config import Config
from ppo_cli.diagnostics import TIMING_COLUMNS
from ppo_cli.monitor import eval_seed
from ppo_cli.trainer import train
from tests.conftest import interrupt_at_update

pytestmark = pytest.mark.slow

ROOT = Path(__file__).parent.parent
PENDULUM = dict(env_id="InvertedPendulum-v5", total_steps=6144, num_envs=1, num_steps=512, num_minibatches=4,
                update_epochs=2, hidden_sizes=(16, 16), eval_interval=3, eval_episodes=3)


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False, env={"COLUMNS": "250"})


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory) -> Path:
    """A short InvertedPendulum run evaluated every 3 of its 12 iterations, with TensorBoard."""
    seed_dir = tmp_path_factory.mktemp("evaluated") / "seed_0"
    seed_dir.mkdir()
    result = train(Config(**PENDULUM, tensorboard=True, checkpoint_interval=3), seed_dir)
    assert result.status == "finished" and result.best_eval is not None
    return seed_dir


def test_evaluations_are_what_ppo_eval_gives_for_the_same_checkpoint(evaluated):
    rows = pd.read_csv(evaluated / "evaluations.csv")
    assert rows["global_step"].tolist() == [1536, 3072, 4608, 6144] and (rows["episodes"] == 3).all()
    result = invoke("eval", evaluated, "--seed", eval_seed(0), "--episodes", "3", "--json")
    assert result.exit_code == 0, result.output
    final = json.loads(result.output)
    last = rows.iloc[-1]
    assert (final["mean"], min(final["returns"]), max(final["returns"])) == (last["mean"], last["min"], last["max"])


def test_best_pt_is_the_argmax_of_evaluations_csv(evaluated):
    rows = pd.read_csv(evaluated / "evaluations.csv")
    best = rows.loc[rows["mean"].idxmax()]
    assert torch.load(evaluated / "best.pt", weights_only=True)["global_step"] == best["global_step"]
    result = invoke("eval", evaluated, "--best", "--seed", eval_seed(0), "--episodes", "3", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["mean"] == best["mean"]


def test_evaluating_best_pt_keeps_the_final_checkpoints_evaluation_and_video(evaluated, monkeypatch):
    """``ppo eval --best`` writes best_eval.json and best_eval.mp4: the final checkpoint's eval.json,
    which ``ppo plot --eval``, ``ppo sweep`` and the benchmarks read, stays its own."""
    monkeypatch.delenv("MUJOCO_GL", raising=False)
    monkeypatch.delenv("DISPLAY", raising=False)
    final = invoke("eval", evaluated, "--episodes", "2", "--render", "--frames", "3", "--json")
    assert final.exit_code == 0, final.output
    kept = {name: (evaluated / name).read_bytes() for name in ("eval.json", "eval.mp4")}
    best = invoke("eval", evaluated, "--best", "--episodes", "2", "--render", "--frames", "4", "--json")
    assert best.exit_code == 0, best.output
    assert {name: (evaluated / name).read_bytes() for name in kept} == kept
    saved = json.loads((evaluated / "best_eval.json").read_text())
    assert Path(saved["checkpoint"]).name == "best.pt" and saved["mean"] == json.loads(best.output)["mean"]
    assert saved["global_step"] == torch.load(evaluated / "best.pt", weights_only=True)["global_step"]
    assert iio.imread(evaluated / "best_eval.mp4", plugin="FFMPEG").shape[0] == 4
    assert Path(json.loads((evaluated / "eval.json").read_text())["checkpoint"]).name == "checkpoint.pt"


def test_tensorboard_holds_the_csv_values(evaluated):
    pytest.importorskip("tensorboard", reason="the tensorboard extra (make installs it)")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(evaluated))
    events.Reload()
    progress, evaluations = pd.read_csv(evaluated / "progress.csv"), pd.read_csv(evaluated / "evaluations.csv")
    for tag, frame, column in (("progress/value_loss", progress, "value_loss"), ("progress/approx_kl", progress,
                                                                                   "approx_kl"),
                               ("eval/mean", evaluations, "mean")):
        scalars = events.Scalars(tag)
        assert [s.step for s in scalars] == frame["global_step"].tolist(), tag
        assert [s.value for s in scalars] == pytest.approx(frame[column].tolist(), rel=1e-6), tag


def test_evaluation_does_not_change_training(tmp_path, evaluated):
    plain = tmp_path / "plain"
    plain.mkdir()
    train(Config(**{**PENDULUM, "eval_interval": 0}, checkpoint_interval=3), plain)
    a = pd.read_csv(plain / "progress.csv").drop(columns=list(TIMING_COLUMNS))
    b = pd.read_csv(evaluated / "progress.csv").drop(columns=list(TIMING_COLUMNS))
    assert a.equals(b)


def test_interrupted_and_resumed_evaluations_equal_uninterrupted(tmp_path, monkeypatch, evaluated):
    config = Config(**PENDULUM, tensorboard=True, checkpoint_interval=3)
    interrupt_at_update(monkeypatch, 8)  # Ctrl-C in iteration 8: the checkpoint of iteration 6 stays
    assert train(config, tmp_path).status == "interrupted"
    monkeypatch.undo()
    assert pd.read_csv(tmp_path / "evaluations.csv")["global_step"].tolist() == [1536, 3072]
    assert train(config, tmp_path, resume=True).status == "finished"
    for name in ("evaluations.csv", "progress.csv"):
        a = pd.read_csv(tmp_path / name).drop(columns=["time_s", "sps"], errors="ignore")
        b = pd.read_csv(evaluated / name).drop(columns=["time_s", "sps"], errors="ignore")
        assert a.equals(b), name
    best = pd.read_csv(tmp_path / "evaluations.csv")
    assert torch.load(tmp_path / "best.pt", weights_only=True)["global_step"] == \
        best.loc[best["mean"].idxmax(), "global_step"]


def test_a_tensorboard_error_never_stops_training(tmp_path, monkeypatch, caplog):
    from torch.utils.tensorboard import SummaryWriter

    def broken(self, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(SummaryWriter, "add_scalar", broken)
    result = train(Config(**{**PENDULUM, "total_steps": 2048}, tensorboard=True), tmp_path)
    assert result.status == "finished" and "TensorBoard is off after an error" in caplog.text
    assert len(pd.read_csv(tmp_path / "progress.csv")) == 4


def test_video_during_training_with_mujoco_gl_unset(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("MUJOCO_GL", "PYOPENGL_PLATFORM", "DISPLAY")}
    done = subprocess.run([sys.executable, "-m", "ppo_cli", "train", "inverted-pendulum", "--total-steps", "2048",
                           "--num-envs", "1", "--num-steps", "512", "--num-minibatches", "4", "--update-epochs",
                           "1", "--hidden-sizes", "8", "--video-interval", "2", "--out", str(tmp_path), "--quiet"],
                          capture_output=True, text=True, timeout=300, env={**env, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stdout + done.stderr
    videos = sorted((tmp_path / "InvertedPendulum-v5" / "default" / "seed_0" / "videos").glob("*.mp4"))
    assert [v.name for v in videos] == ["step_1024.mp4", "step_2048.mp4"]
    frames = iio.imread(videos[-1], plugin="FFMPEG")
    assert frames.shape[0] > 1 and min(float(f.std()) for f in frames) > 5.0  # the scene, not blank frames


@pytest.mark.parametrize("args, message", [
    (["--eval-interval", "-1"], "Invalid value for '--eval-interval': must be 0 (never) or a number of iterations"),
    (["--eval-episodes", "0"], "Invalid value for '--eval-episodes': must be a positive integer, got 0"),
    (["--video-interval", "-2"], "Invalid value for '--video-interval'"),
])
def test_bad_values_for_the_new_options(tmp_path, args, message):
    result = invoke("train", "pendulum", *args, "--out", tmp_path)
    assert result.exit_code == 2 and message in " ".join(result.output.split()), result.output
    assert not (tmp_path / "Pendulum-v1").exists()


def test_tensorboard_without_its_package_is_one_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    result = invoke("train", "pendulum", "--tensorboard", "--out", tmp_path)
    assert result.exit_code == 2 and "--tensorboard needs the tensorboard extra" in " ".join(result.output.split())


def test_the_final_table_and_ppo_plot_show_the_evaluations(evaluated, tmp_path):
    result = invoke("plot", evaluated.parent, "--eval", "--out", tmp_path / "fig.png")
    assert result.exit_code == 0, result.output
    summary = pd.read_csv(tmp_path / "summary.csv")
    rows = pd.read_csv(evaluated / "evaluations.csv")
    assert summary.loc[0, "evaluation_last_mean"] == rows["mean"].iloc[-1]
    assert summary.loc[0, "evaluation_best_mean"] == rows["mean"].max()
    assert "best evaluation during training (optimistic" in " ".join(result.output.split())
    from ppo_cli.plots.report import plot_runs

    plotted = plot_runs([evaluated.parent], tmp_path / "again.png", with_eval=True)
    assert plotted.metrics[:2] == ("episodic_return", "evaluation")
    curve = plotted.curves[(plotted.curves["metric"] == "evaluation") & plotted.curves["x"].isin(rows["global_step"])]
    assert curve["mean"].tolist() == pytest.approx(rows["mean"].tolist())  # one seed: its curve, at its steps
    trained = invoke("train", "inverted-pendulum", "--total-steps", "1024", "--num-envs", "1", "--num-steps", "512",
                     "--num-minibatches", "4", "--eval-interval", "1", "--eval-episodes", "2", "--out", tmp_path,
                     "--quiet")
    assert trained.exit_code == 0 and "best eval" in trained.output and "last eval" in trained.output
