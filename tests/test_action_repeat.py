"""--action-repeat: an action held for K environment steps, rewards summed, stopping at an episode end."""

import json

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from ppo_cli.checkpoint import load_checkpoint
from ppo_cli.cli import cli
from ppo_cli.envs import ActionRepeat, EnvBatch, make_env
from tests.conftest import interrupt_at_update, same_rows

POINT = "tests.fake_envs:PointEnv"
SMALL = ["--num-envs", "2", "--num-steps", "64", "--num-minibatches", "4", "--update-epochs", "2",
         "--hidden-sizes", "16,16", "--quiet", "--trust-env"]


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def plain_steps(action: float, count: int, seed: int = 0) -> list[tuple]:
    env = make_env(POINT)
    env.reset(seed=seed)
    return [env.step(np.array([action]))[:4] for _ in range(count)]


def test_rewards_are_summed_over_the_held_action():
    env = make_env(POINT, action_repeat=3)
    assert isinstance(env, ActionRepeat)
    env.reset(seed=0)
    plain = plain_steps(0.1, 6)
    for k in range(2):
        obs, reward, terminated, truncated, _ = env.step(np.array([0.1]))
        assert reward == pytest.approx(sum(r for _, r, _, _ in plain[3 * k:3 * k + 3]), abs=1e-12)
        np.testing.assert_array_equal(obs, plain[3 * k + 2][0])
        assert not terminated and not truncated
    assert env.unwrapped.t == 6


def test_an_episode_end_inside_the_repeat_ends_the_step():
    plain = plain_steps(1.0, 10)
    ends = next(i for i, (_, _, terminated, _) in enumerate(plain) if terminated) + 1  # |x| > 5 after `ends` frames
    env = make_env(POINT, action_repeat=ends + 5)
    env.reset(seed=0)
    _, reward, terminated, _, _ = env.step(np.array([1.0]))
    assert terminated and env.unwrapped.t == ends
    assert reward == pytest.approx(sum(r for _, r, _, _ in plain[:ends]))


def test_time_limits_count_frames():
    """PointEnv truncates after 50 frames: with a repeat of 4 an episode is 13 steps (the last holds 2 frames)."""
    batch = EnvBatch(POINT, 1, [0], action_repeat=4)
    batch.reset()
    for step in range(1, 14):
        _, _, terminated, truncated, _ = batch.step(np.zeros((1, 1)))
        assert bool(truncated[0]) == (step == 13) and not terminated[0]
    assert batch.finished[0][1] == 13


def test_a_run_with_action_repeat_records_it_evaluates_with_it_and_resumes_exactly(tmp_path, monkeypatch):
    options = [*SMALL, "--total-steps", "1024", "--action-repeat", "3", "--checkpoint-interval", "1"]
    full = invoke("train", POINT, "--out", tmp_path, "--run-name", "full", *options)
    assert full.exit_code == 0, full.output
    assert "frames" in full.output and "3,072" in full.output  # steps x repeat
    run = tmp_path / "tests.fake_envs_PointEnv"
    seed = run / "full" / "seed_0"
    assert json.loads((seed / "config.json").read_text())["action_repeat"] == 3
    assert pd.read_csv(seed / "episodes.csv")["length"].max() <= 17  # 50 frames: 17 steps at most
    evaluated = invoke("eval", seed / "checkpoint.pt", "--episodes", "2", "--json", "--trust-env")
    assert evaluated.exit_code == 0, evaluated.output
    assert max(json.loads(evaluated.output)["lengths"]) <= 17
    with monkeypatch.context() as m:
        interrupt_at_update(m, 5)
        assert invoke("train", POINT, "--out", tmp_path, "--run-name", "cut", *options).exit_code == 130
    assert load_checkpoint(run / "cut" / "seed_0" / "checkpoint.pt")["global_step"] == 512
    assert invoke("train", "--resume", run / "cut", "--trust-env", "--quiet").exit_code == 0
    assert same_rows(run / "full" / "seed_0", run / "cut" / "seed_0")


@pytest.mark.parametrize("args, message", [
    (["--action-repeat", "0"], "Invalid value for '--action-repeat': must be a positive integer, got 0"),
    (["--action-repeat", "two"], "'two' is not a valid integer"),
    (["--action-repeat", "2", "--backend", "envpool"], "--action-repeat 2 needs the gymnasium --backend (envpool steps its own environments)"),
])
def test_bad_action_repeats_are_one_error(tmp_path, args, message):
    result = invoke("train", "Hopper-v4", "--out", tmp_path, *args)
    assert result.exit_code == 2 and message in " ".join(result.output.split()), result.output
    assert "Traceback" not in result.output and not list(tmp_path.iterdir())
