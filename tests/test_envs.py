import gymnasium as gym
import numpy as np
import pytest

from ppo_cli.envs import EnvBatch, EnvError, alias_table, check_spaces, make_env, resolve_env_id


def test_aliases_resolve_to_newest_registered_version():
    assert resolve_env_id("hopper") == "Hopper-v5"
    assert resolve_env_id("Hopper") == "Hopper-v5"
    assert resolve_env_id("pendulum") == "Pendulum-v1"
    assert resolve_env_id("inverted-pendulum") == "InvertedPendulum-v5"
    assert resolve_env_id("Hopper-v4") == "Hopper-v4"
    assert ("halfcheetah", "HalfCheetah-v5") in alias_table()


def test_unknown_env_suggests_close_names():
    with pytest.raises(EnvError, match="unknown environment 'hoper'.*did you mean.*hopper"):
        resolve_env_id("hoper")


def test_module_attr_entry_points():
    assert resolve_env_id("tests.fake_envs:PointEnv") == "tests.fake_envs:PointEnv"
    env = make_env("tests.fake_envs:point_factory")
    assert env.observation_space.shape == (2,)
    with pytest.raises(EnvError, match="cannot import module 'no_such_module_xyz'"):
        resolve_env_id("no_such_module_xyz:Env")
    with pytest.raises(EnvError, match="has no attribute 'Missing'"):
        resolve_env_id("tests.fake_envs:Missing")
    with pytest.raises(EnvError, match="not a class or factory"):
        resolve_env_id("tests.fake_envs:NOT_CALLABLE")


def test_space_checks():
    spaces = check_spaces(make_env("Pendulum-v1"), "Pendulum-v1")
    assert (spaces.obs_dim, spaces.act_dim, spaces.discrete) == (3, 1, False)
    assert check_spaces(make_env("CartPole-v1"), "CartPole-v1").discrete
    with pytest.raises(EnvError, match="action space MultiDiscrete.*not supported"):
        check_spaces(make_env("tests.fake_envs:MultiDiscreteEnv"), "x")


def test_env_batch_matches_gymnasium_including_time_limit_truncation():
    """Same seeds and actions: same observations, rewards, terminations and truncations as gym.make."""
    seeds = [11, 12]
    batch = EnvBatch("Pendulum-v1", 2, seeds)
    refs = [gym.make("Pendulum-v1") for _ in seeds]
    obs = batch.reset().copy()
    ref_obs = [env.reset(seed=s)[0] for env, s in zip(refs, seeds)]
    np.testing.assert_array_equal(obs, np.stack(ref_obs))
    rng = np.random.default_rng(0)
    truncations = 0
    for _ in range(450):  # Pendulum truncates at 200 steps: crosses two episode ends
        actions = rng.uniform(-3, 3, size=(2, 1))  # beyond the bounds: both must clip
        obs, rew, term, trunc, final = batch.step(actions)
        for i, env in enumerate(refs):
            o, r, te, tr, _ = env.step(np.clip(actions[i], -2, 2))
            assert r == rew[i] and te == term[i] and (tr and not te) == trunc[i]
            if te or tr:
                np.testing.assert_array_equal(final[i], o)
                o, _ = env.reset()
                truncations += 1
            np.testing.assert_array_equal(obs[i], o)
    assert truncations == 4
    assert len(batch.finished) == 4 and all(length == 200 for _, length in batch.finished)


def test_env_batch_termination_is_not_truncation():
    batch = EnvBatch("tests.fake_envs:PointEnv", 1, [0])
    batch.reset()
    for _ in range(10):
        _, _, term, trunc, _ = batch.step(np.array([[1.0]]))
        if term[0]:
            break
    assert term[0] and not trunc[0]
