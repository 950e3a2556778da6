import numpy as np
import pytest
import torch

from ppo_cli.agent import TORCH_ACTIVATIONS, ActorCritic, RolloutPolicy, activate, activation_grad


@pytest.mark.parametrize("activation", ["tanh", "relu", "elu"])
@pytest.mark.parametrize("hidden", [(64, 64), (32,), (16, 8, 4)])
def test_numpy_rollout_policy_equals_torch_module(hidden, activation):
    agent = ActorCritic(5, 3, hidden, seed=1, activation=activation)
    with torch.no_grad():  # move away from the init so every weight matters
        for p in agent.parameters():
            p.add_(0.1 * torch.randn_like(p))
    policy = RolloutPolicy(agent)
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(7, 5)).astype(np.float32)
    noise = rng.standard_normal((7, 3), dtype=np.float32)
    actions, logprobs, values = policy.act(obs, noise)
    with torch.no_grad():
        mean = agent(torch.from_numpy(obs))[0].numpy()
        logprob, _, value = agent.evaluate(torch.from_numpy(obs), torch.from_numpy(actions))
    np.testing.assert_allclose(actions, mean + np.exp(agent.log_std.detach().numpy()) * noise, atol=1e-6)
    np.testing.assert_allclose(logprobs, logprob.numpy(), atol=1e-5, rtol=1e-6)
    np.testing.assert_allclose(values, value.numpy(), atol=1e-6)
    np.testing.assert_allclose(policy.mode(obs), mean, atol=1e-6)


def test_rollout_policy_follows_sync():
    agent = ActorCritic(4, 2, (8, 8), seed=0)
    policy = RolloutPolicy(agent)
    with torch.no_grad():
        agent.log_std.fill_(-1.0)
        agent.weights[0][1].mul_(3.0)  # the critic's first layer
    policy.sync(agent)
    obs = np.ones((1, 4), dtype=np.float32)
    np.testing.assert_allclose(policy.std, np.exp(-1.0), rtol=1e-6)
    np.testing.assert_allclose(policy.value(obs), agent.value(torch.from_numpy(obs)).detach().numpy(), atol=1e-6)


def test_categorical_policy_equals_torch_and_samples_its_probabilities():
    agent = ActorCritic(3, 4, (16,), discrete=True, seed=2)
    with torch.no_grad():
        agent.weights[-1][0].mul_(100.0)  # the actor's output layer
    policy = RolloutPolicy(agent)
    obs = np.tile(np.array([[0.3, -0.2, 0.5]], dtype=np.float32), (20000, 1))
    u = np.random.default_rng(0).random((20000, 1), dtype=np.float32)
    actions, logprobs, _ = policy.act(obs, u)
    with torch.no_grad():
        logprob, entropy, _ = agent.evaluate(torch.from_numpy(obs[:5]), torch.from_numpy(actions[:5]).float())
        probs = torch.softmax(agent(torch.from_numpy(obs[:1]))[0], -1).numpy()[0]
    np.testing.assert_allclose(logprobs[:5], logprob.numpy(), atol=1e-5)
    freq = np.bincount(actions, minlength=4) / len(actions)
    np.testing.assert_allclose(freq, probs, atol=0.015)
    assert entropy[0] == pytest.approx(-(probs * np.log(np.maximum(probs, 1e-30))).sum(), abs=1e-4)


def test_gaussian_head_has_state_independent_log_std_and_orthogonal_init():
    agent = ActorCritic(6, 2, (64, 64), seed=0)
    assert agent.log_std.shape == (2,) and torch.all(agent.log_std == 0)
    for net in (0, 1):  # actor, critic: (6, 64) first layers with orthogonal rows scaled by sqrt(2)
        w = agent.weights[0][net].detach()
        torch.testing.assert_close(w @ w.T, 2.0 * torch.eye(6), atol=1e-5, rtol=0)
    assert not torch.equal(agent.weights[0][0], agent.weights[0][1])  # two separate networks
    assert torch.linalg.norm(agent.weights[-1][0]) < 0.05  # small policy output layer
    obs = torch.randn(3, 6)
    _, entropy, _ = agent.evaluate(obs, torch.zeros(3, 2))
    assert torch.allclose(entropy, entropy[0])  # same std in every state


def test_actor_and_critic_are_separate_networks_and_critic_padding_stays_zero():
    """Stacked storage computes two independent MLPs: the value does not depend on actor weights,
    the mean not on critic weights, and the critic's unused output columns get zero gradient."""
    agent = ActorCritic(4, 3, (8, 8), seed=0)
    obs = torch.randn(5, 4)
    mean, value = agent(obs)
    with torch.no_grad():
        for w in agent.weights:
            w[0].add_(1.0)  # change only the actor
    mean2, value2 = agent(obs)
    assert torch.equal(value, value2) and not torch.equal(mean, mean2)
    assert torch.all(agent.weights[-1][1, :, 1:] == 0) and torch.all(agent.biases[-1][1, :, 1:] == 0)
    logprob, _, value = agent.evaluate(obs, torch.randn(5, 3))
    (logprob.sum() + value.sum()).backward()
    assert torch.all(agent.weights[-1].grad[1, :, 1:] == 0)
    assert torch.all(agent.biases[-1].grad[1, :, 1:] == 0)


def test_the_activations_are_the_functions_their_names_say():
    """tanh, relu, elu (alpha 1) and their derivatives from the output, against hand values."""
    x = np.array([-2.0, -0.5, 0.0, 0.3, 1.5])
    want = {"tanh": (np.tanh(x), 1 - np.tanh(x) ** 2),
            "relu": (np.array([0, 0, 0, 0.3, 1.5]), np.array([0, 0, 0, 1.0, 1])),
            "elu": (np.array([np.exp(-2) - 1, np.exp(-0.5) - 1, 0, 0.3, 1.5]), np.array([np.exp(-2), np.exp(-0.5), 1, 1, 1]))}
    for name, (value, slope) in want.items():
        h = x.copy()
        activate(name, h)
        np.testing.assert_allclose(h, value, atol=1e-12)
        np.testing.assert_allclose(activation_grad(name, h), slope, atol=1e-12)
        np.testing.assert_allclose(TORCH_ACTIVATIONS[name](torch.from_numpy(x)).numpy(), value, atol=1e-12)
    with pytest.raises(ValueError, match="unknown activation 'gelu'"):
        ActorCritic(4, 2, (8,), activation="gelu")
