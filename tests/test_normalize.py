import numpy as np
import pytest

from ppo_cli.wrappers import ObservationNormalizer, RewardNormalizer, RunningMeanStd


@pytest.mark.parametrize("sizes", [[1] * 30, [7, 1, 13, 2, 40], [100], [1, 50, 1, 1, 3]])
def test_running_mean_std_stream_equals_concatenated_data(sizes):
    rng = np.random.default_rng(0)
    batches = [rng.normal(3.0, 2.0, size=(n, 4)) * [1, 10, 0.1, 5] for n in sizes]
    rms = RunningMeanStd((4,))
    for batch in batches:
        rms.update(batch)
    data = np.concatenate(batches)
    np.testing.assert_allclose(rms.mean, data.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(rms.var, data.var(axis=0), rtol=1e-10)
    assert rms.count == len(data)


def test_running_mean_std_starts_as_identity_and_round_trips():
    rms = RunningMeanStd((3,))
    np.testing.assert_array_equal(rms.mean, 0.0)
    np.testing.assert_array_equal(rms.var, 1.0)
    rms.update(np.arange(12.0).reshape(4, 3))
    other = RunningMeanStd((3,))
    other.load_state_dict(rms.state_dict())
    np.testing.assert_array_equal(other.mean, rms.mean)
    np.testing.assert_array_equal(other.var, rms.var)
    assert other.count == rms.count
    with pytest.raises(ValueError, match="do not fit"):
        RunningMeanStd((2,)).load_state_dict(rms.state_dict())


def test_observation_filter_normalises_clips_and_freezes():
    f = ObservationNormalizer((2,), clip=1.5)
    data = np.array([[0.0, 10.0], [2.0, 10.0], [4.0, 40.0]])
    out = f(data)
    mean, std = data.mean(0), np.sqrt(data.var(0) + 1e-8)
    np.testing.assert_allclose(out, np.clip((data - mean) / std, -1.5, 1.5), rtol=1e-6)
    assert out.dtype == np.float32 and np.abs(out).max() <= 1.5
    f.training = False
    before = f.state_dict()
    f(np.array([[100.0, -100.0]]))
    np.testing.assert_array_equal(f.state_dict()["mean"], before["mean"])
    assert f.state_dict()["count"] == before["count"]
    off = ObservationNormalizer((2,), enabled=False)
    np.testing.assert_array_equal(off(data), data.astype(np.float32))


def test_reward_filter_matches_hand_computed_discounted_return_std():
    gamma = 0.9
    rewards = np.array([1.0, 2.0, 0.5, 3.0, -1.0, 2.0])
    dones = np.array([False, False, True, False, False, False])
    f = RewardNormalizer(num_envs=1, gamma=gamma, clip=100.0)
    outs = [f(np.array([r]), np.array([d]))[0] for r, d in zip(rewards, dones)]
    # by hand: G_t = gamma * G_{t-1} + r_t, reset to 0 after a done
    g, seen = 0.0, []
    for t, (r, d) in enumerate(zip(rewards, dones)):
        g = gamma * g + r
        seen.append(g)
        std = np.sqrt(np.var(seen) + 1e-8)
        assert outs[t] == pytest.approx(np.clip(r / std, -100, 100), rel=1e-5)  # no mean subtraction
        if d:
            g = 0.0
    assert seen[3] == 3.0  # the return restarted after the episode end


def test_reward_filter_clips_and_freezes():
    f = RewardNormalizer(num_envs=2, gamma=0.99, clip=0.5)
    for r in ([1.0, -1.0], [2.0, 0.0], [0.5, 3.0]):
        f(np.array(r), np.zeros(2, dtype=bool))
    out = f(np.array([1e6, -1e6]), np.zeros(2, dtype=bool))
    np.testing.assert_array_equal(out, [0.5, -0.5])
    f.training = False
    count = f.rms.count
    f(np.array([1.0, 1.0]), np.array([True, False]))
    assert f.rms.count == count
    assert f.returns[0] == 0.0 and f.returns[1] != 0.0
    g = RewardNormalizer(num_envs=2, gamma=0.99)
    g.load_state_dict(f.state_dict())
    np.testing.assert_array_equal(g.returns, f.returns)
    assert g.rms.var == f.rms.var


def test_reward_filter_of_one_env_is_bit_identical_to_the_array_path():
    rng = np.random.default_rng(0)
    one, many = RewardNormalizer(num_envs=1, gamma=0.99, clip=5.0), RewardNormalizer(num_envs=1, gamma=0.99, clip=5.0)
    for t in range(500):
        reward, done = rng.normal(0.0, 3.0, size=1), rng.random(1) < 0.05
        if t == 400:
            one.training = many.training = False
        assert one._call_one(reward, done)[0] == many._call_many(reward, done)[0]
        assert one.returns[0] == many.returns[0]
    assert (one.rms.mean, one.rms.var, one.rms.count) == (many.rms.mean, many.rms.var, many.rms.count)
    assert one(np.array([1e9]), np.array([False]))[0] == 5.0  # and the public call takes the one-env path
