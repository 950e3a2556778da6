import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from ppo_cli import render
from ppo_cli.checkpoint import load_checkpoint, save_checkpoint
from ppo_cli.cli import cli
from ppo_cli.envs import make_env
from ppo_cli.evaluate import default_episodes, load_agent, run_episodes
from ppo_cli.layout import checkpoint_files
from ppo_cli.wrappers import ObservationNormalizer
from tests.conftest import LEARN_THRESHOLD, write_malicious_checkpoint

pytestmark = pytest.mark.slow


def invoke(*args: str):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def checkpoint(trained_pendulum) -> Path:
    return Path(trained_pendulum.checkpoint)


def test_eval_uses_the_saved_statistics_and_reaches_the_training_threshold(checkpoint):
    result = invoke("eval", checkpoint, "--episodes", "3", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["episodes"] == 3 and data["env_id"] == "InvertedPendulum-v5"
    assert data["mean"] >= LEARN_THRESHOLD
    assert json.loads((checkpoint.parent / "eval.json").read_text())["returns"] == data["returns"]

    loaded = load_agent(checkpoint)
    assert not loaded.obs_filter.training
    assert loaded.obs_filter.rms.count > 1000  # the training statistics, not fresh ones
    fresh = ObservationNormalizer(loaded.obs_filter.rms.mean.shape, training=False)
    env = make_env("InvertedPendulum-v5")
    fresh_returns, _ = run_episodes(env, loaded.policy, fresh, 3, seed=0)
    saved_returns, _ = run_episodes(env, loaded.policy, loaded.obs_filter, 3, seed=0)
    assert saved_returns == data["returns"]  # same seed, same episodes
    assert np.mean(fresh_returns) != np.mean(saved_returns)
    assert np.mean(fresh_returns) < LEARN_THRESHOLD  # without its statistics the policy fails


def test_eval_plays_10_episodes_unless_told_and_50_on_dmc(checkpoint):
    result = invoke("eval", checkpoint, "--json")
    assert result.exit_code == 0 and json.loads(result.output)["episodes"] == 10, result.output
    assert default_episodes("InvertedPendulum-v5") == 10 and default_episodes("dm_control/walker-walk-v0") == 50


def test_eval_table_and_run_folder(checkpoint):
    result = invoke("eval", checkpoint.parent.parent, "--episodes", "2", "--stochastic")
    assert result.exit_code == 0, result.output
    assert "mean +- std" in result.output and "stochastic" in result.output
    assert checkpoint_files(checkpoint.parent.parent) == [checkpoint]


@pytest.mark.parametrize("suffix", [".mp4", ".gif"])
def test_video_has_the_requested_frames_and_shows_the_robot(checkpoint, tmp_path, suffix):
    path = tmp_path / f"clip{suffix}"
    result = invoke("eval", checkpoint, "--episodes", "1", "--video", path, "--frames", "12", "--fps", "25")
    assert result.exit_code == 0, result.output
    frames = iio.imread(path, plugin="FFMPEG" if suffix == ".mp4" else None)
    assert frames.shape[0] == 12 and frames.shape[-1] == 3
    # blank frames (a known EGL failure) have ~0 pixel variance; the rendered scene has plenty
    assert min(float(frame.std()) for frame in frames) > 5.0
    assert not list(tmp_path.glob(".*tmp*"))


def test_render_without_display_writes_a_video_next_to_the_checkpoint(checkpoint, monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    result = invoke("eval", checkpoint, "--episodes", "1", "--render", "--frames", "5")
    assert result.exit_code == 0, result.output
    video = checkpoint.parent / "eval.mp4"
    assert video.is_file()
    assert f"video: {video}" in result.output.replace("\n", "")
    assert iio.imread(video, plugin="FFMPEG").shape[0] == 5


def test_osmesa_fallback_when_egl_fails(monkeypatch):
    monkeypatch.delenv("MUJOCO_GL", raising=False)
    monkeypatch.delenv("PYOPENGL_PLATFORM", raising=False)
    monkeypatch.delitem(__import__("sys").modules, "OpenGL", raising=False)  # as in a fresh process
    monkeypatch.setattr(render, "probe_backend", lambda backend: backend == "osmesa")
    assert render.use_offscreen_backend() == "osmesa"
    assert os.environ["MUJOCO_GL"] == "osmesa" and os.environ["PYOPENGL_PLATFORM"] == "osmesa"


@pytest.mark.parametrize("backend", ["egl", "osmesa"])
def test_both_off_screen_backends_start_here(backend):
    """.ci/run installs Mesa's EGL and OSMesa; both must give a MuJoCo context."""
    assert render.probe_backend(backend)


def test_no_renderer_says_which_packages_to_install(checkpoint, monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.setenv("MUJOCO_GL", "egl")
    monkeypatch.setattr(render, "probe_backend", lambda backend: False)
    result = invoke("eval", checkpoint, "--render")
    assert result.exit_code == 2
    assert "no off-screen renderer could be started" in result.output and "libegl1" in result.output



def _bad_checkpoints(tmp_path: Path, checkpoint: Path) -> dict[str, tuple[list[str], str]]:
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.ones(2)}, foreign)
    text = tmp_path / "notes.pt"
    text.write_text("hello")
    cut = tmp_path / "cut.pt"
    data = checkpoint.read_bytes()
    cut.write_bytes(data[: len(data) // 3])
    state = load_checkpoint(checkpoint)
    state["config"]["env_id"] = "NotInstalledEnv-v0"
    missing_env = tmp_path / "missing_env.pt"
    save_checkpoint(missing_env, state)
    evil = tmp_path / "evil.pt"
    write_malicious_checkpoint(evil, tmp_path / "pwned")
    return {
        "missing": ([str(tmp_path / "nope.pt")], "does not exist"),
        "foreign": ([str(foreign)], "is not a ppo checkpoint"),
        "text": ([str(text)], "truncated or not a checkpoint"),
        "truncated": ([str(cut)], "truncated or not a checkpoint"),
        "env": ([str(missing_env)], "environment cannot be built here"),
        "malicious": ([str(evil)], "was refused: it holds objects other than plain tensors"),
        "episodes": ([str(checkpoint), "--episodes", "0"], "Invalid value for '--episodes'"),
        "video dir": ([str(checkpoint), "--video", str(tmp_path / "no" / "dir" / "v.mp4")], "does not exist"),
        "video type": ([str(checkpoint), "--video", str(tmp_path / "v.avi")], "must end in .mp4 or .gif"),
        "empty dir": ([str(tmp_path)], "holds no checkpoint.pt"),
    }


@pytest.mark.parametrize("case", ["missing", "foreign", "text", "truncated", "env", "malicious", "episodes",
                                  "video dir", "video type"])
def test_bad_input_is_one_clear_error_and_touches_nothing(checkpoint, tmp_path, case):
    cases = _bad_checkpoints(tmp_path, checkpoint)
    before = sorted(p.name for p in checkpoint.parent.iterdir())
    eval_json = (checkpoint.parent / "eval.json").read_text() if (checkpoint.parent / "eval.json").exists() else None
    args, message = cases[case]
    result = invoke("eval", *args)
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split()), result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "pwned").exists()  # the crafted pickle never ran
    assert sorted(p.name for p in checkpoint.parent.iterdir()) == before
    if eval_json is not None:
        assert (checkpoint.parent / "eval.json").read_text() == eval_json


def test_empty_folder_is_refused(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = invoke("eval", empty)
    assert result.exit_code == 2 and "holds no checkpoint.pt" in result.output


def test_user_environment_checkpoint_evaluates(tmp_path):
    from ppo_cli.config import Config
    from ppo_cli.trainer import train

    train(Config(env_id="tests.fake_envs:PointEnv", total_steps=256, num_envs=1, num_steps=128, num_minibatches=2,
                 update_epochs=1), tmp_path)
    result = invoke("eval", tmp_path, "--episodes", "2", "--json", "--trust-env")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["env_id"] == "tests.fake_envs:PointEnv"


@pytest.mark.skipif(shutil.which("Xvfb") is None, reason="needs Xvfb (.ci/run installs it)")
def test_render_with_a_display_opens_a_live_window(tmp_path):
    """With DISPLAY set, --render plays in a MuJoCo window (here on a virtual X screen), no video."""
    from ppo_cli.config import Config
    from ppo_cli.trainer import train

    train(Config(env_id="InvertedPendulum-v5", total_steps=1024, num_envs=1, num_steps=512, num_minibatches=4,
                 update_epochs=1), tmp_path)  # barely trained: short episodes
    display = f":{90 + os.getpid() % 500}"
    xvfb = subprocess.Popen(["Xvfb", display, "-screen", "0", "640x480x24"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        time.sleep(1.0)
        env = {k: v for k, v in os.environ.items() if k not in ("MUJOCO_GL", "PYOPENGL_PLATFORM")}
        env.update(DISPLAY=display, PYTHONPATH=str(Path(__file__).parent.parent))
        done = subprocess.run([sys.executable, "-m", "ppo_cli", "eval", str(tmp_path), "--render", "--episodes", "2"],
                              env=env, capture_output=True, text=True, timeout=120)
    finally:
        xvfb.terminate()
        xvfb.wait(timeout=10)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "mean +- std" in done.stdout and "video:" not in done.stdout
    assert not (tmp_path / "eval.mp4").exists()
