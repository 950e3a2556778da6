"""The envpool backend: same dynamics as Gymnasium, same autoreset semantics as EnvBatch."""

import sys

import gymnasium as gym
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from ppo_cli.cli import cli
from ppo_cli.config import Config
from ppo_cli.envs import EnvError, EnvPoolBatch, check_backend
from ppo_cli.trainer import train
from tests.conftest import interrupt_at_update

envpool = pytest.importorskip("envpool", reason="the envpool backend is the optional '.[fast]' extra")


def _sync_reference(ref, obs: np.ndarray, x_position: float) -> None:
    """Put Gymnasium's Hopper into envpool's state: obs = (qpos[1:], qvel), x from the info."""
    ref.set_state(np.concatenate([[x_position], obs[:5]]), obs[5:11].copy())


def test_envpool_hopper_matches_gymnasium_step_for_step():
    pool = envpool.make("Hopper-v4", env_type="gymnasium", num_envs=1, seed=3)
    obs, info = pool.reset()
    ref = gym.make("Hopper-v4").unwrapped
    ref.reset(seed=0)
    rng = np.random.default_rng(0)
    compared = 0
    for _ in range(3):  # three episodes, each started from envpool's own initial state
        _sync_reference(ref, obs[0], info["x_position"][0])
        np.testing.assert_array_equal(ref._get_obs(), obs[0])
        while True:
            action = rng.uniform(-1, 1, (1, 3))
            obs, reward, terminated, truncated, info = pool.step(action)
            ref_obs, ref_reward, ref_terminated, _, _ = ref.step(action[0])
            np.testing.assert_allclose(obs[0], ref_obs, rtol=0, atol=1e-9)
            assert reward[0] == pytest.approx(ref_reward, abs=1e-6)  # envpool returns float32 rewards
            assert bool(terminated[0]) == ref_terminated
            compared += 1
            if terminated[0] or truncated[0]:
                obs, _, _, _, info = pool.step(np.zeros((1, 3)))  # envpool resets on the next step
                break
    assert compared > 20


def test_envpool_batch_keeps_same_step_autoreset_semantics():
    """Against a raw pool with the same seed: final observations, rewards and the next episode's
    first observations agree; finished episodes are counted with their raw returns."""
    batch = EnvPoolBatch("Hopper-v4", 3, seed=7)
    raw = envpool.make("Hopper-v4", env_type="gymnasium", num_envs=3, seed=7)
    np.testing.assert_array_equal(batch.reset(), raw.reset()[0])
    rng = np.random.default_rng(1)
    episodes = 0
    returns = np.zeros(3)
    for _ in range(200):
        actions = rng.uniform(-1, 1, (3, 3))
        obs, rewards, terminated, truncated, final_obs = batch.step(actions)
        raw_obs, raw_rewards, raw_term, raw_trunc, _ = raw.step(actions)
        done = raw_term | raw_trunc
        np.testing.assert_array_equal(terminated, raw_term)
        np.testing.assert_array_equal(rewards, raw_rewards.astype(np.float64))
        np.testing.assert_array_equal(obs[~done], raw_obs[~done])
        np.testing.assert_array_equal(final_obs[done], raw_obs[done])
        returns += raw_rewards
        if done.any():  # the raw pool resets these on its next step: compare that observation
            ids = np.flatnonzero(done)
            reset_obs = raw.step(np.zeros((ids.size, 3)), ids.astype(np.int32))[0]
            np.testing.assert_array_equal(obs[ids], reset_obs)
            for i in ids:
                assert batch.finished[episodes][0] == pytest.approx(returns[i], rel=1e-6)
                episodes += 1
                returns[i] = 0.0
    assert episodes >= 6 and len(batch.finished) == episodes


def test_backend_checks():
    check_backend("Hopper-v4", "envpool")
    with pytest.raises(EnvError, match="envpool has no task 'tests.fake_envs:PointEnv'"):
        check_backend("tests.fake_envs:PointEnv", "envpool")


def test_cli_backend_errors(tmp_path, monkeypatch):
    runner = CliRunner()
    result = runner.invoke(cli, ["train", "tests.fake_envs:PointEnv", "--backend", "envpool", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "Invalid value for '--backend': envpool has no task" in result.output
    result = runner.invoke(cli, ["train", "hopper", "--backend", "cpp", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "'cpp' is not one of 'gymnasium', 'envpool'" in result.output
    monkeypatch.setitem(sys.modules, "envpool", None)  # as if not installed
    result = runner.invoke(cli, ["train", "Hopper-v4", "--backend", "envpool", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "envpool is not installed; pip install" in " ".join(result.output.split())
    assert not list(tmp_path.rglob("seed_*"))


@pytest.mark.slow
def test_training_and_resume_with_envpool(tmp_path, monkeypatch):
    config = Config(env_id="Hopper-v4", backend="envpool", num_envs=4, num_steps=128, total_steps=2048,
                    num_minibatches=4, update_epochs=2, checkpoint_interval=2)
    with monkeypatch.context() as m:
        interrupt_at_update(m, 3)
        assert train(config, tmp_path).status == "interrupted"
    resumed = train(config, tmp_path, resume=True)
    assert resumed.status == "finished" and "resumed from new episodes" in resumed.message
    progress = pd.read_csv(tmp_path / "progress.csv")
    assert progress["global_step"].tolist() == list(range(512, 2049, 512))
    assert progress["episodes"].sum() > 0
