import dataclasses

import pytest

from ppo_cli.config import PRESETS, Config, ConfigError, preset, task_family


def test_defaults_are_the_benchmarked_mujoco_config_and_sizes_are_derived():
    c = Config(env_id="Hopper-v5")
    assert (c.num_envs, c.num_steps, c.update_epochs, c.num_minibatches, c.lr, c.gamma, c.gae_lambda) == \
        (64, 32, 10, 32, 3e-4, 0.99, 0.95)
    assert (c.clip_coef, c.clip_vloss, c.ent_coef, c.vf_coef, c.max_grad_norm, c.hidden_sizes) == \
        (0.2, False, 0.0, 0.25, 0.5, (64, 64))
    assert (c.norm_adv, c.recompute_adv, c.init_log_std) == (False, True, -0.5)
    assert c.anneal_lr and c.norm_obs and c.norm_reward and c.target_kl is None and c.dual_clip is None
    assert (c.batch_size, c.minibatch_size, c.num_iterations) == (2048, 64, 488)
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.lr = 1.0  # type: ignore[misc]


def test_json_round_trip():
    c = Config(env_id="Pendulum-v1", seed=3, hidden_sizes=(32, 16), target_kl=0.02, dual_clip=3.0)
    back = Config.from_json(c.to_json())
    assert back == c and back.hidden_sizes == (32, 16)
    with pytest.raises(ConfigError, match="unknown config field"):
        Config.from_dict({**c.to_dict(), "bogus": 1})


@pytest.mark.parametrize("changes, field, text", [
    ({"num_envs": 0}, "num_envs", "positive integer, got 0"),
    ({"total_steps": -5}, "total_steps", "positive integer"),
    ({"update_epochs": 0}, "update_epochs", "positive integer"),
    ({"lr": 0.0}, "lr", "positive number, got 0.0"),
    ({"lr": float("nan")}, "lr", "positive number"),
    ({"gamma": 1.5}, "gamma", "in (0, 1], got 1.5"),
    ({"gamma": 0.0}, "gamma", "in (0, 1]"),
    ({"gae_lambda": -0.1}, "gae_lambda", "in (0, 1]"),
    ({"dual_clip": 1.0}, "dual_clip", "> 1"),
    ({"target_kl": 0.0}, "target_kl", "positive"),
    ({"ent_coef": -1.0}, "ent_coef", ">= 0"),
    ({"hidden_sizes": (64, 0)}, "hidden_sizes", "positive widths"),
    ({"activation": "sigmoid"}, "activation", "activation must be tanh, relu, elu, got 'sigmoid'"),
    ({"num_minibatches": 7}, "num_minibatches", "does not divide the batch size 2048"),
    ({"total_steps": 1000}, "total_steps", "less than one rollout batch of 2048"),
    # what only a crafted config.json or checkpoint can hold (the CLI's types refuse them first)
    ({"num_envs": 1.5}, "num_envs", "positive integer, got 1.5"),
    ({"num_steps": float("inf")}, "num_steps", "positive integer, got inf"),
    ({"seed": True}, "seed", "integer >= 0, got True"),
    ({"hidden_sizes": [64, "x"]}, "hidden_sizes", "positive widths like 64,64, got [64, 'x']"),
    ({"eval_interval": 0.5}, "eval_interval", "0 (never) or a number of iterations, got 0.5"),
    # the CLI's too: an update sized beyond what torch can allocate failed inside the seed
    ({"update_epochs": 10 ** 20}, "update_epochs", "at most 10,000 (PPO uses 3-30)"),
])
def test_validation_names_the_field_and_value(changes, field, text):
    with pytest.raises(ConfigError) as info:
        Config(env_id="Hopper-v5", **changes)
    assert field in info.value.fields
    assert text in str(info.value)


def test_gamma_and_lambda_of_one_are_valid():
    Config(env_id="Hopper-v5", gamma=1.0, gae_lambda=1.0)


def test_presets_name_real_fields_with_valid_values_per_task():
    for name, tasks in PRESETS.items():
        for family, values in tasks.items():
            env_id = "Hopper-v5" if family == "*" else f"{family}-v4"
            assert preset(name, env_id) == values
            c = Config(env_id=env_id, **preset(name, env_id))
            assert all(getattr(c, k) == v for k, v in values.items())
    classic = Config(env_id="Hopper-v5", **preset("classic", "Hopper-v5"))
    assert (classic.batch_size, classic.minibatch_size) == (2048, 64)  # SB3/CleanRL's sizes
    assert preset("classic", "my_pkg.envs:Robot") == preset("classic")  # "*": any task
    assert preset("tuned", "Walker2d-v5") == {"gae_lambda": 0.9}
    assert preset("tuned", "Hopper-v4") == {} and preset("tuned", "HalfCheetah-v5") == {}  # the defaults
    assert preset("tuned", "dm_control/cheetah-run-v0") == {"hidden_sizes": (256, 256), "gae_lambda": 0.9}
    assert preset("tuned", "dm_control/walker-run-v0") == {"hidden_sizes": (256, 256), "activation": "elu"}
    assert preset("tuned", "dm_control/reacher-hard-v0") == {"hidden_sizes": (256, 256), "init_log_std": 0.0}
    assert preset("tuned", "dm_control/cartpole-swingup-v0") == {"stagger_resets": True}
    assert preset("tuned", "dm_control/finger-spin-v0") == {"init_log_std": 0.0, "stagger_resets": True}
    assert preset("tuned", "dm_control/walker-walk-v0") == {"hidden_sizes": (256, 256), "activation": "relu"}
    assert preset("tuned", "dm_control/cartpole-balance-v0") == {}  # not benchmarked: the defaults
    with pytest.raises(ConfigError, match="unknown preset 'fast'; choose from classic, tuned"):
        preset("fast")


def test_task_family_drops_the_version_only():
    assert task_family("Walker2d-v4") == "Walker2d" and task_family("my-env-v12") == "my-env"
    assert task_family("pkg.mod:Env") == "pkg.mod:Env" and task_family("Foo-vX") == "Foo-vX"
