"""--update fused|autograd|auto: which path computes a minibatch, and that they agree."""

import functools

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from ppo_cli import losses
from ppo_cli.agent import ActorCritic
from ppo_cli.cli import cli
from ppo_cli.config import Config, ConfigError
from ppo_cli.fused import FusedLoss
from ppo_cli.optim import make_optimizer
from ppo_cli.update import make_loss_fn, ppo_update, update_path

POINT = "tests.fake_envs:PointEnv"


def _config(**changes) -> Config:
    return Config(env_id=POINT, total_steps=256, num_envs=1, num_steps=256, num_minibatches=4, update_epochs=3,
                  **changes)


def _batch(agent: ActorCritic, n: int = 256) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    batch = {"obs": torch.randn(n, 3, generator=g), "actions": torch.randn(n, 2, generator=g),
             "values": torch.randn(n, generator=g), "advantages": torch.randn(n, generator=g),
             "returns": torch.randn(n, generator=g)}
    with torch.no_grad():
        batch["logprobs"] = agent.evaluate(batch["obs"], batch["actions"])[0] - 0.1 * batch["advantages"]
    return batch


def test_auto_is_fused_for_gaussian_policies_and_autograd_for_categorical_ones():
    gaussian, categorical = ActorCritic(3, 2, (8,)), ActorCritic(3, 4, (8,), discrete=True)
    assert update_path(gaussian, _config()) == "fused" and isinstance(make_loss_fn(gaussian, _config()), FusedLoss)
    assert update_path(categorical, _config()) == "autograd"
    loss_fn = make_loss_fn(gaussian, _config(update="autograd"))
    assert isinstance(loss_fn, functools.partial) and loss_fn.func is losses.minibatch_loss
    assert update_path(gaussian, _config(compile=True)) == "autograd"


@pytest.mark.parametrize("make, problem", [
    (lambda: ActorCritic(3, 4, (8,), discrete=True), "its actions are discrete"),
    (lambda: ActorCritic(3, 2, (8,)).to(torch.float16), "its parameters are torch.float16"),
    (lambda: _with_activation(ActorCritic(3, 2, (8,)), "selu"), "its activation is selu"),
])
def test_fused_refuses_what_it_cannot_compute(make, problem):
    agent = make()
    with pytest.raises(ValueError, match=f"--update fused cannot compute this policy: {problem}"):
        make_loss_fn(agent, _config(update="fused"))
    with pytest.raises(ValueError, match=problem):
        FusedLoss(agent, None)


def _with_activation(agent: ActorCritic, name: str) -> ActorCritic:
    agent.activation = name
    return agent


def test_fused_and_autograd_updates_agree():
    """The reference and the fast path: the same parameters after three full updates (float32 rounding)."""
    params = {}
    for update in ("fused", "autograd"):
        agent = ActorCritic(3, 2, (16, 16), seed=0)
        config = _config(update=update, clip_vloss=True, ent_coef=0.01)
        optimizer = make_optimizer(agent, config)
        batch = _batch(agent)
        for _ in range(3):
            ppo_update(agent, optimizer, batch, config, np.random.default_rng(0), make_loss_fn(agent, config, optimizer))
        params[update] = [p.detach().clone() for p in agent.parameters()]
    for a, b in zip(params["fused"], params["autograd"]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_compile_with_update_fused_is_refused():
    with pytest.raises(ConfigError, match="compile applies to the autograd path only"):
        _config(update="fused", compile=True)


def test_update_is_a_train_option_and_recorded(tmp_path):
    runner = CliRunner()
    tiny = ["--total-steps", "512", "--num-envs", "1", "--num-steps", "256", "--num-minibatches", "4",
            "--update-epochs", "1", "--hidden-sizes", "8", "--quiet", "--out", str(tmp_path)]
    result = runner.invoke(cli, ["train", "pendulum", "--update", "autograd", *tiny])
    assert result.exit_code == 0, result.output
    assert Config.from_json(next(tmp_path.glob("*/default/seed_0/config.json")).read_text()).update == "autograd"
    result = runner.invoke(cli, ["train", "cartpole", "--update", "fused", *tiny])
    assert result.exit_code == 2
    assert "--update fused computes Gaussian policies, and CartPole-v1 has discrete actions" in \
        " ".join(result.output.split())
    result = runner.invoke(cli, ["train", "pendulum", "--update", "fused", "--compile", *tiny])
    assert result.exit_code == 2 and "--compile applies to the autograd path only, and --update is fused" in " ".join(result.output.split())
    assert runner.invoke(cli, ["train", "cartpole", *tiny]).exit_code == 0  # auto: autograd for discrete actions


@pytest.mark.parametrize("activation", ["relu", "elu"])
def test_activation_is_a_train_option_recorded_and_rebuilt_by_eval(tmp_path, activation):
    """The fused update trains it, config.json and the checkpoint keep it, ppo eval acts with it."""
    from ppo_cli.evaluate import load_agent

    tiny = ["--total-steps", "512", "--num-envs", "1", "--num-steps", "256", "--num-minibatches", "4",
            "--update-epochs", "1", "--hidden-sizes", "8", "--quiet", "--out", str(tmp_path)]
    result = CliRunner().invoke(cli, ["train", "pendulum", "--activation", activation, *tiny])
    assert result.exit_code == 0, result.output
    seed_dir = next(tmp_path.glob("*/default/seed_0"))
    assert Config.from_json((seed_dir / "config.json").read_text()).activation == activation
    loaded = load_agent(seed_dir / "checkpoint.pt")
    state = torch.load(seed_dir / "checkpoint.pt", weights_only=True)
    agent = ActorCritic(3, 1, (8,), activation=activation)
    agent.load_state_dict(state["model"])
    obs = np.random.default_rng(0).normal(size=(16, 3)).astype(np.float32)
    with torch.no_grad():
        mean, value = agent(torch.from_numpy(obs))
    np.testing.assert_allclose(loaded.policy.mode(obs), mean.numpy(), atol=1e-6)
    tanh = ActorCritic(3, 1, (8,))
    tanh.load_state_dict(state["model"])
    assert not np.allclose(tanh(torch.from_numpy(obs))[1].detach().numpy(), value.numpy(), atol=1e-4)
    assert CliRunner().invoke(cli, ["eval", str(seed_dir), "--episodes", "1", "--json"]).exit_code == 0
    result = CliRunner().invoke(cli, ["train", "pendulum", "--activation", "gelu", *tiny])
    assert result.exit_code == 2 and "'gelu' is not one of 'tanh', 'relu', 'elu'" in result.output
