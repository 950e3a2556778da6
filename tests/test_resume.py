"""Runs that survive: resume from the CLI, hard kills, NaNs, untrusted checkpoints, disk space."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from ppo_cli.checkpoint import load_checkpoint
from ppo_cli.cli import cli
from ppo_cli.diagnostics import TIMING_COLUMNS
from ppo_cli.trainer import _Seeds
from tests.conftest import interrupt_at_update, same_rows, write_malicious_checkpoint

ROOT = Path(__file__).parent.parent
POINT = "tests.fake_envs:PointEnv"
SMALL = ["--num-envs", "1", "--num-steps", "256", "--num-minibatches", "4", "--update-epochs", "2", "--hidden-sizes", "16,16",
         "--quiet"]


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def test_cli_resume_of_a_run_folder_equals_an_uninterrupted_run(tmp_path):
    full = invoke("train", POINT, "--total-steps", "2048", "--out", tmp_path, "--run-name", "full", *SMALL)
    part = invoke("train", POINT, "--total-steps", "1024", "--out", tmp_path, "--run-name", "part", *SMALL)
    assert full.exit_code == 0 and part.exit_code == 0
    run = tmp_path / "tests.fake_envs_PointEnv"
    # a run trained to 1024 of 2048 steps is not the same run: its learning rate annealed faster.
    # Resume it as the checkpoint of the same config would be: rewrite the total first.
    state = load_checkpoint(run / "part" / "seed_0" / "checkpoint.pt")
    assert state["global_step"] == 1024
    resumed = invoke("train", "--resume", run / "part", "--total-steps", "2048", "--quiet", "--trust-env")
    assert resumed.exit_code == 0, resumed.output
    progress = pd.read_csv(run / "part" / "seed_0" / "progress.csv")
    assert progress["iteration"].tolist() == list(range(1, 9))
    assert progress["global_step"].is_monotonic_increasing and progress["global_step"].iloc[-1] == 2048
    finished = invoke("train", "--resume", run / "part" / "seed_0", "--trust-env")
    assert finished.exit_code == 0 and "already finished at step 2,048" in " ".join(finished.output.split())


def test_resume_of_an_environment_with_a_legacy_random_state_is_exact(tmp_path, monkeypatch):
    """dm_control's np_random is a RandomState (no bit_generator): episode ends crashed, and resume
    must restore it, since each episode's start is drawn from it."""
    legacy = "tests.fake_envs:LegacyRandomEnv"
    options = ["--num-envs", "2", "--num-steps", "128", "--num-minibatches", "4", "--update-epochs", "2",
               "--hidden-sizes", "16,16", "--total-steps", "2048", "--checkpoint-interval", "1", "--quiet"]
    assert invoke("train", legacy, "--out", tmp_path, "--run-name", "full", *options).exit_code == 0
    with monkeypatch.context() as m:
        interrupt_at_update(m, 5)  # Ctrl-C in iteration 5, mid-episode (episodes are 50 steps, rollouts 128)
        assert invoke("train", legacy, "--out", tmp_path, "--run-name", "cut", *options).exit_code == 130
    run = tmp_path / "tests.fake_envs_LegacyRandomEnv"
    starts = load_checkpoint(run / "cut" / "seed_0" / "checkpoint.pt")["envs"]["episode_start"]
    assert all(start["seed"] is None and "random_state" in start["rng"] for start in starts)
    resumed = invoke("train", "--resume", run / "cut", "--trust-env", "--quiet")
    assert resumed.exit_code == 0, resumed.output
    assert same_rows(run / "full" / "seed_0", run / "cut" / "seed_0")


def test_resume_refuses_other_options_and_folders_that_are_not_runs(tmp_path):
    result = invoke("train", "--resume", tmp_path)
    assert result.exit_code == 2 and "is not a ppo run" in " ".join(result.output.split())
    (tmp_path / "seed_0").mkdir()
    (tmp_path / "seed_0" / "checkpoint.pt").write_text("not a checkpoint")
    result = invoke("train", "--resume", tmp_path)
    assert result.exit_code == 2 and "truncated or not a checkpoint" in " ".join(result.output.split())
    result = invoke("train", "--resume", tmp_path, "--lr", "0.1", "--seeds", "2")
    assert result.exit_code == 2
    assert "drop --lr, --seeds (only --total-steps, --jobs, --quiet and --trust-env go with --resume)" in \
        " ".join(result.output.split())



def test_resume_rejects_a_malicious_checkpoint_without_running_it(tmp_path):
    seed_dir = tmp_path / "run" / "seed_0"
    seed_dir.mkdir(parents=True)
    write_malicious_checkpoint(seed_dir / "checkpoint.pt", tmp_path / "pwned")
    result = invoke("train", "--resume", tmp_path / "run")
    assert result.exit_code == 2
    assert "was refused: it holds objects other than plain tensors" in " ".join(result.output.split())
    assert not (tmp_path / "pwned").exists()


def test_not_enough_disk_space_starts_nothing(tmp_path, monkeypatch):
    import shutil

    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=100_000))
    result = invoke("train", POINT, "--total-steps", "1024", "--out", tmp_path / "out", *SMALL)
    assert result.exit_code == 2 and "not enough free space" in result.output
    assert not (tmp_path / "out").exists()


def test_a_nan_seed_fails_alone_and_keeps_its_last_good_checkpoint(tmp_path, monkeypatch):
    bad_seed = 1
    monkeypatch.setenv("PPO_TEST_NAN_ENV_SEED", str(_Seeds.from_seed(bad_seed, 1).env_seeds[0]))
    result = invoke("train", "tests.fake_envs:NanForSeedEnv", "--seeds", "2", "--jobs", "2", "--total-steps", "2048",
                    "--checkpoint-interval", "1", "--out", tmp_path, *SMALL)
    assert result.exit_code == 1, result.output
    text = " ".join(result.output.split())
    assert "seed 1: policy_loss became nan in iteration 3; kept the state after iteration 2" in text
    run = tmp_path / "tests.fake_envs_NanForSeedEnv" / "default"
    bad = load_checkpoint(run / "seed_1" / "checkpoint.pt")
    assert bad["iteration"] == 2 and all(torch.isfinite(t).all() for t in bad["model"].values())
    assert load_checkpoint(run / "seed_0" / "checkpoint.pt")["global_step"] == 2048


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_completes(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "ppo_cli", "train", POINT, "--total-steps", "5000000", "--checkpoint-interval", "1",
           "--out", str(tmp_path), *SMALL]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                            start_new_session=True)
    seed_dir = tmp_path / "tests.fake_envs_PointEnv" / "default" / "seed_0"
    progress = seed_dir / "progress.csv"
    deadline = time.time() + 120
    while time.time() < deadline and not (progress.is_file() and len(progress.read_text().splitlines()) > 6):
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)

    state = load_checkpoint(seed_dir / "checkpoint.pt")  # loadable after the kill
    killed_at = state["global_step"]
    assert killed_at >= 5 * 256
    pd.read_csv(progress)  # readable
    target = killed_at + 4 * 256
    resumed = subprocess.run([sys.executable, "-m", "ppo_cli", "train", "--resume", str(seed_dir.parent),
                              "--total-steps", str(target), "--quiet", "--trust-env"], env=env, capture_output=True,
                             text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    rows = pd.read_csv(progress)
    assert rows["global_step"].tolist() == list(range(256, target + 1, 256))  # no gap, no duplicate
    episodes = pd.read_csv(seed_dir / "episodes.csv")
    assert episodes["global_step"].is_monotonic_increasing and episodes["global_step"].max() <= target
    assert not list(seed_dir.glob(".checkpoint.pt.*"))
    assert set(rows.columns) >= set(TIMING_COLUMNS)
