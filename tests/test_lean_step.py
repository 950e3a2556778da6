import gymnasium as gym
import numpy as np
import pytest

from ppo_cli.envs import EnvBatch
from ppo_cli.lean_step import lean_step

TASKS = ["Hopper-v4", "Hopper-v5", "Walker2d-v4", "Walker2d-v5", "HalfCheetah-v4", "HalfCheetah-v5"]


@pytest.mark.parametrize("env_id", TASKS)
def test_lean_step_is_bit_identical_to_gymnasium_through_terminations(env_id):
    """Two copies from the same seed, one stepped by Gymnasium, one by the lean step: every
    observation, reward and termination equal (exactly), over several episodes."""
    reference, lean_env = gym.make(env_id).unwrapped, gym.make(env_id).unwrapped
    step = lean_step(lean_env)
    assert step is not None
    rng = np.random.default_rng(0)
    terminations = 0
    for episode in range(4):
        obs_a, _ = reference.reset(seed=episode)
        obs_b, _ = lean_env.reset(seed=episode)
        np.testing.assert_array_equal(obs_a, obs_b)
        for _ in range(300):
            action = rng.uniform(-1.5, 1.5, size=reference.action_space.shape)  # large: falls early
            action = np.clip(action, reference.action_space.low, reference.action_space.high).astype(np.float64)
            obs_a, reward_a, term_a, _, _ = reference.step(action)
            obs_b, reward_b, term_b = step(action)
            np.testing.assert_array_equal(obs_b, obs_a)
            assert reward_b == reward_a and bool(term_b) == bool(term_a)
            if term_a:
                terminations += 1
                break
    if not env_id.startswith("HalfCheetah"):
        assert terminations >= 2  # the terminal step (and v4's healthy reward on it) was compared


def test_lean_step_declines_what_it_does_not_know():
    assert lean_step(gym.make("InvertedPendulum-v5").unwrapped) is None
    assert lean_step(gym.make("Ant-v5").unwrapped) is None
    assert lean_step(gym.make("Hopper-v5", render_mode="rgb_array").unwrapped) is None

    class MyHopper(type(gym.make("Hopper-v5").unwrapped)):
        pass

    assert lean_step(MyHopper()) is None


def test_env_batch_uses_the_lean_step_for_hopper_and_matches_gymnasium_make():
    batch = EnvBatch("Hopper-v4", 2, [3, 4])
    assert all(step is not None for step in batch.lean_steps)
    reference = [gym.make("Hopper-v4") for _ in range(2)]
    obs = batch.reset()
    ref_obs = [env.reset(seed=s)[0] for env, s in zip(reference, [3, 4])]
    np.testing.assert_array_equal(obs, np.stack(ref_obs))
    rng = np.random.default_rng(1)
    for _ in range(200):
        actions = rng.uniform(-1, 1, size=(2, 3)).astype(np.float32)
        obs, rewards, terminated, truncated, final = batch.step(actions)
        for i, env in enumerate(reference):
            o, r, term, trunc, _ = env.step(np.clip(actions[i], -1.0, 1.0).astype(np.float64))
            assert rewards[i] == r and terminated[i] == term
            if term or trunc:
                np.testing.assert_array_equal(final[i], o)
                o, _ = env.reset()
            np.testing.assert_array_equal(obs[i], o)


def test_a_gymnasium_whose_step_differs_makes_the_batch_fall_back_to_env_step(monkeypatch):
    """As if a Gymnasium release changed Hopper's reward: the check at the start of the run notices,
    and the batch steps with env.step (and says so), so training computes what Gymnasium computes."""
    from gymnasium.envs.mujoco.hopper_v5 import HopperEnv

    assert EnvBatch("Hopper-v5", 2, [0, 1]).lean_steps[0] is not None  # the installed Gymnasium matches
    real = HopperEnv.step

    def changed(self, action):
        obs, reward, terminated, truncated, info = real(self, action)
        return obs, reward + 1.0, terminated, truncated, info

    monkeypatch.setattr(HopperEnv, "step", changed)
    batch = EnvBatch("Hopper-v5", 2, [0, 1])
    assert batch.lean_steps == [None, None]
    assert batch.notes == ["this Gymnasium's Hopper-v5 step differs from ppo's lean MuJoCo step; using env.step"]
    batch.reset()
    _, rewards, _, _, _ = batch.step(np.zeros((2, 3)))
    reference = gym.make("Hopper-v5").unwrapped
    reference.reset(seed=0)
    assert rewards[0] == changed(reference, np.zeros(3))[1]
