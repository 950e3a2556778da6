import numpy as np
import pytest

from ppo_cli.rollout import RolloutStorage, gae


def test_gae_by_hand_with_termination_and_truncation():
    gamma, lam = 0.9, 0.8
    # one env, 5 steps: step 1 terminates, step 3 is truncated (bootstrap value 7), then step 4
    r = np.array([[1.0], [2.0], [0.5], [1.5], [3.0]])
    v = np.array([[0.5], [1.0], [2.0], [4.0], [1.0]])
    term = np.array([[0], [1], [0], [0], [0]], dtype=bool)
    trunc = np.array([[0], [0], [0], [1], [0]], dtype=bool)
    next_v = np.array([[1.0], [2.0], [4.0], [7.0], [6.0]])  # v[t+1]; 7 = V(final obs); 6 = last value
    adv, ret = gae(r, v, next_v, term, term | trunc, gamma, lam)
    d4 = 3.0 + gamma * 6.0 - 1.0
    d3 = 1.5 + gamma * 7.0 - 4.0  # truncation: bootstrap from V(final obs)
    d2 = 0.5 + gamma * 4.0 - 2.0
    d1 = 2.0 + 0.0 - 1.0  # termination: no bootstrap
    d0 = 1.0 + gamma * 1.0 - 0.5
    a4 = d4
    a3 = d3  # episode cut: nothing flows back from step 4
    a2 = d2 + gamma * lam * a3
    a1 = d1
    a0 = d0 + gamma * lam * a1
    np.testing.assert_allclose(adv[:, 0], [a0, a1, a2, a3, a4])
    np.testing.assert_allclose(ret, adv + v)


def test_gae_lambda_one_gives_discounted_returns_and_envs_are_independent():
    rng = np.random.default_rng(1)
    r = rng.normal(size=(6, 2))
    v = rng.normal(size=(6, 2))
    zeros = np.zeros((6, 2), dtype=bool)
    next_v = np.vstack([v[1:], [[0.0, 2.0]]])
    adv, ret = gae(r, v, next_v, zeros, zeros, 0.95, 1.0)
    for e, last in ((0, 0.0), (1, 2.0)):
        g = last
        for t in range(5, -1, -1):
            g = r[t, e] + 0.95 * g
            assert ret[t, e] == pytest.approx(g)


def test_storage_next_values_uses_bootstrap_only_on_truncation():
    s = RolloutStorage(num_steps=3, num_envs=2, obs_dim=1, action_shape=(1,))
    s.values[:] = [[1, 2], [3, 4], [5, 6]]
    s.truncated[1, 0] = True
    s.bootstrap_values[1, 0] = 9.0
    s.terminated[0, 1] = True
    s.bootstrap_values[0, 1] = 100.0  # ignored: not truncated
    nxt = s.next_values(np.array([7.0, 8.0]))
    np.testing.assert_array_equal(nxt, [[3, 4], [9, 6], [7, 8]])
