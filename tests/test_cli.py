import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from ppo_cli.cli import cli
from ppo_cli.config import Config
from ppo_cli.launch import SeedJob, run_seeds

TINY = ["--total-steps", "512", "--num-envs", "1", "--num-steps", "256", "--num-minibatches", "4", "--update-epochs", "2",
        "--hidden-sizes", "16,16", "--quiet"]


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_help_lists_every_option_with_defaults():
    result = invoke("train", "--help")
    assert result.exit_code == 0
    for flag in ("--total-steps", "--seeds", "--seed", "--num-envs", "--num-steps", "--update-epochs",
                 "--num-minibatches", "--lr", "--anneal-lr / --no-anneal-lr", "--gamma", "--gae-lambda",
                 "--clip-coef", "--dual-clip", "--clip-vloss / --no-clip-vloss", "--ent-coef", "--vf-coef",
                 "--max-grad-norm", "--target-kl", "--norm-obs / --no-norm-obs",
                 "--norm-reward / --no-norm-reward", "--hidden-sizes", "--out", "--run-name", "--jobs",
                 "--quiet", "--norm-adv / --no-norm-adv", "--recompute-adv / --no-recompute-adv",
                 "--init-log-std"):
        assert flag in result.output, flag
    assert "[default: 32]" in result.output and "[default: -0.5]" in result.output
    assert invoke("--help").exit_code == 0


def test_envs_lists_aliases():
    result = invoke("envs")
    assert result.exit_code == 0 and "Hopper-v5" in result.output and "inverted-pendulum" in result.output


@pytest.mark.parametrize("args, message", [
    (["hoper"], "unknown environment 'hoper'; did you mean hopper"),
    (["no_such_pkg.envs:MyEnv"], "cannot import module 'no_such_pkg.envs'"),
    (["tests.fake_envs:MultiDiscreteEnv"], "action space MultiDiscrete"),
    (["pendulum", "--num-envs", "0"], "Invalid value for '--num-envs': must be a positive integer, got 0"),
    (["pendulum", "--num-steps", "-3"], "'--num-steps'"),
    (["pendulum", "--lr", "0"], "Invalid value for '--lr'"),
    (["pendulum", "--lr", "-1e-3"], "positive number, got -0.001"),
    (["pendulum", "--num-minibatches", "7"], "--num-minibatches 7 does not divide the batch size 2048"),
    (["pendulum", "--gamma", "1.5"], "Invalid value for '--gamma': must be in (0, 1], got 1.5"),
    (["pendulum", "--gae-lambda", "0"], "Invalid value for '--gae-lambda'"),
    (["pendulum", "--dual-clip", "1.0"], "Invalid value for '--dual-clip'"),
    (["pendulum", "--hidden-sizes", "64,abc"], "is not a list of layer widths"),
    (["pendulum", "--total-steps", "100"], "--total-steps 100 is less than one rollout batch"),
    (["pendulum", "--seeds", "0"], "Invalid value for '--seeds'"),
    (["pendulum", "--preset", "fast"], "Invalid value for '--preset': 'fast' is not one of 'classic', 'tuned'"),
])
def test_bad_input_is_one_clear_error_with_exit_code_2(tmp_path, args, message):
    result = invoke("train", *args, "--out", str(tmp_path))
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split()), result.output
    assert "Traceback" not in result.output
    assert not list(tmp_path.rglob("seed_*"))  # nothing started


def test_a_preset_replaces_the_defaults_and_given_options_still_win(tmp_path):
    result = invoke("train", "pendulum", "--preset", "classic", "--vf-coef", "0.3", "--out", str(tmp_path), *TINY)
    assert result.exit_code == 0, result.output
    saved = Config.from_json((tmp_path / "Pendulum-v1" / "default" / "seed_0" / "config.json").read_text())
    assert (saved.clip_vloss, saved.norm_adv, saved.recompute_adv, saved.init_log_std, saved.gae_lambda) == \
        (True, True, False, 0.0, 0.95)  # from the preset
    assert (saved.vf_coef, saved.num_steps, saved.total_steps) == (0.3, 256, 512)  # given
    resumed = invoke("train", "--resume", str(tmp_path / "Pendulum-v1" / "default"), "--preset", "classic")
    assert resumed.exit_code == 2 and "drop --preset" in " ".join(resumed.output.split())


def test_help_spells_out_what_each_preset_sets():
    from ppo_cli.cli import _describe_preset

    assert _describe_preset("tuned") == \
        "Walker2d --gae-lambda 0.9; dm_control/cheetah-run --hidden-sizes 256,256 --gae-lambda 0.9; " \
        "dm_control/walker-walk --hidden-sizes 256,256 --activation relu; " \
        "dm_control/walker-run --hidden-sizes 256,256 --activation elu; " \
        "dm_control/finger-spin --init-log-std 0.0 --stagger-resets; dm_control/reacher-hard --hidden-sizes 256,256 --init-log-std 0.0; " \
        "dm_control/cartpole-swingup --stagger-resets"
    assert _describe_preset("classic").startswith("any task --num-envs 1 --num-steps 2048")
    assert "--clip-vloss" in _describe_preset("classic") and "--no-recompute-adv" in _describe_preset("classic")
    help_text = " ".join(invoke("train", "--help").output.split())
    assert "tuned: Walker2d --gae-lambda 0.9; dm_control/cheetah-run --hidden-sizes" in help_text


def test_the_tuned_preset_changes_walker2d_and_not_hopper(tmp_path):
    for env, lam in (("walker2d", 0.9), ("hopper", 0.95)):
        result = invoke("train", env, "--preset", "tuned", "--out", str(tmp_path), *TINY)
        assert result.exit_code == 0, result.output
        (seed_dir,) = tmp_path.glob(f"{env.capitalize()}-v*/default/seed_0")
        assert Config.from_json((seed_dir / "config.json").read_text()).gae_lambda == lam


def test_unwritable_out_is_refused(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    result = invoke("train", "pendulum", "--out", str(blocker / "results"), *TINY)
    assert result.exit_code == 2 and "Invalid value for '--out': cannot write to" in result.output


@pytest.mark.slow
def test_multi_seed_run_writes_every_file_and_never_overwrites(tmp_path):
    result = invoke("train", "inverted-pendulum", "--seeds", "2", "--jobs", "2", "--out", str(tmp_path), *TINY)
    assert result.exit_code == 0, result.output
    run = tmp_path / "InvertedPendulum-v5" / "default"
    for seed in (0, 1):
        folder = run / f"seed_{seed}"
        for name in ("config.json", "progress.csv", "episodes.csv", "checkpoint.pt"):
            assert (folder / name).is_file(), folder / name
        assert Config.from_json((folder / "config.json").read_text()).seed == seed
        assert len(pd.read_csv(folder / "progress.csv")) == 2
    assert "finished" in result.output and "seed 1 step 512/512" in result.output

    again = invoke("train", "inverted-pendulum", "--out", str(tmp_path), *TINY)
    assert again.exit_code == 0 and (tmp_path / "InvertedPendulum-v5" / "default-2" / "seed_0").is_dir()
    named = invoke("train", "inverted-pendulum", "--out", str(tmp_path), "--run-name", "default", *TINY)
    assert named.exit_code == 2 and "default already exists" in " ".join(named.output.split())


def test_a_failing_seed_does_not_stop_the_others(tmp_path):
    good = Config(env_id="tests.fake_envs:PointEnv", total_steps=256, num_envs=1, num_steps=128, num_minibatches=2,
                  update_epochs=1, seed=0)
    bad = good.replace(env_id="tests.fake_envs:MultiDiscreteEnv", seed=1)
    for name in ("good", "bad"):
        (tmp_path / name).mkdir()
    events = []
    results = run_seeds([SeedJob(good, tmp_path / "good"), SeedJob(bad, tmp_path / "bad")], 2, events.append)
    assert [r.status for r in results] == ["finished", "failed"]
    assert "action space MultiDiscrete" in results[1].message
    assert (tmp_path / "bad" / "error.txt").is_file()
    assert any(kind == "iteration" and seed == 0 for kind, seed, _ in events)


def test_python_dash_m_and_console_script():
    for cmd in ([sys.executable, "-m", "ppo_cli", "--help"], [str(Path(sys.executable).parent / "ppo"), "--version"]):
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0 and "ppo" in out.stdout


@pytest.mark.slow
def test_ctrl_c_stops_cleanly_and_saves_a_checkpoint(tmp_path):
    cmd = [sys.executable, "-m", "ppo_cli", "train", "tests.fake_envs:PointEnv", "--total-steps", "2000000",
           "--num-envs", "1", "--num-steps", "256", "--num-minibatches", "4", "--update-epochs", "2", "--seeds", "2", "--jobs", "2",
           "--checkpoint-interval", "1000", "--out", str(tmp_path), "--quiet"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True)
    progress = [tmp_path / "tests.fake_envs_PointEnv" / "default" / f"seed_{k}" / "progress.csv" for k in (0, 1)]
    deadline = time.time() + 120
    while time.time() < deadline and not all(p.is_file() and len(p.read_text().splitlines()) > 3 for p in progress):
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGINT)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, output
    assert "Traceback" not in output
    for p in progress:
        rows = pd.read_csv(p)
        state_step = __import__("torch").load(p.parent / "checkpoint.pt", weights_only=True)["global_step"]
        assert state_step == rows["global_step"].iloc[-1] > 0  # checkpoint of the last finished iteration
    assert "interrupted" in output and "checkpoint of step" in output
