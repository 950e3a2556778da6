import numpy as np
import pandas as pd
import pytest
import torch

from ppo_cli import fused, losses
from ppo_cli.agent import ActorCritic
from ppo_cli.checkpoint import CheckpointError, kernels, load_checkpoint, save_checkpoint
from ppo_cli.config import Config
from ppo_cli.diagnostics import EPISODE_COLUMNS, PROGRESS_COLUMNS, TIMING_COLUMNS
from ppo_cli.trainer import train
from ppo_cli.update import ppo_update
from tests.conftest import LEARN, LEARN_THRESHOLD, interrupt_at_update

POINT = "tests.fake_envs:PointEnv"


def small(**changes) -> Config:
    base = dict(env_id=POINT, total_steps=1024, num_envs=1, num_steps=256, num_minibatches=4, update_epochs=2,
                hidden_sizes=(16, 16), checkpoint_interval=2)
    return Config(**{**base, **changes})


def _random_batch(n: int, obs_dim: int = 3, act_dim: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"obs": torch.randn(n, obs_dim, generator=g), "actions": torch.randn(n, act_dim, generator=g),
            "logprobs": torch.randn(n, generator=g) - 3.0, "values": torch.randn(n, generator=g),
            "advantages": torch.randn(n, generator=g), "returns": torch.randn(n, generator=g)}


def test_kl_early_stop_halts_the_update():
    config = Config(env_id=POINT, total_steps=64, num_envs=1, num_steps=64, num_minibatches=4, update_epochs=5,
                    target_kl=1e-12)
    agent = ActorCritic(3, 2, (8,), seed=0)
    before = [p.detach().clone() for p in agent.parameters()]
    optimizer = torch.optim.Adam(agent.parameters(), lr=1e-3, eps=1e-5)
    stats = ppo_update(agent, optimizer, _random_batch(64), config, np.random.default_rng(0))
    # random old log-probs: the KL is far above 1e-12 on the first minibatch, so nothing changes
    assert stats.update_fraction == 0.0
    assert all(torch.equal(a, b) for a, b in zip(before, agent.parameters()))
    stats = ppo_update(agent, optimizer, _random_batch(64), config.replace(target_kl=None), np.random.default_rng(0))
    assert stats.update_fraction == 1.0
    assert not all(torch.equal(a, b) for a, b in zip(before, agent.parameters()))


def test_kl_early_stop_stops_midway_when_the_policy_moves():
    config = Config(env_id=POINT, total_steps=256, num_envs=1, num_steps=256, num_minibatches=8, update_epochs=10,
                    lr=0.05, target_kl=0.01, anneal_lr=False)
    agent = ActorCritic(3, 2, (8,), seed=0)
    batch = _random_batch(256)
    with torch.no_grad():  # old log-probs from the current policy: KL starts at exactly 0
        batch["logprobs"] = agent.evaluate(batch["obs"], batch["actions"])[0]
    optimizer = torch.optim.Adam(agent.parameters(), lr=config.lr, eps=1e-5)
    stats = ppo_update(agent, optimizer, batch, config, np.random.default_rng(0))
    assert 0.0 < stats.update_fraction < 1.0
    assert stats.approx_kl > 0


def test_train_writes_every_file_and_the_checkpoint_round_trips(tmp_path):
    config = small()
    result = train(config, tmp_path)
    assert result.status == "finished" and result.global_step == 1024 and result.iterations == 4
    assert Config.from_json((tmp_path / "config.json").read_text()) == config
    progress = pd.read_csv(tmp_path / "progress.csv")
    assert tuple(progress.columns) == PROGRESS_COLUMNS
    assert progress["global_step"].tolist() == [256, 512, 768, 1024]
    assert progress["update_fraction"].eq(1.0).all() and progress["action_std"].gt(0).all()
    assert progress["learning_rate"].tolist() == pytest.approx([3e-4, 2.25e-4, 1.5e-4, 0.75e-4])
    episodes = pd.read_csv(tmp_path / "episodes.csv")
    assert tuple(episodes.columns) == EPISODE_COLUMNS and len(episodes) == progress["episodes"].sum()

    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert state["global_step"] == 1024 and state["config"] == config.to_dict()
    assert state["obs_rms"]["count"] == 1024 + 1  # every observation seen, incl. the first reset
    assert state["reward_rms"]["count"] == 1024
    agent = ActorCritic(2, 1, (16, 16), seed=0)
    agent.load_state_dict(state["model"])
    assert "torch" in state["versions"] and state["versions"]["kernels"] == kernels()
    assert state["spaces"] == {"obs_dim": 2, "act_dim": 1, "discrete": False}
    assert not list(tmp_path.glob(".checkpoint.pt.*"))  # no temp files left behind


def test_checkpoint_loader_rejects_foreign_and_broken_files(tmp_path):
    save_checkpoint(tmp_path / "ok.pt", {"x": torch.ones(2)})
    assert load_checkpoint(tmp_path / "ok.pt")["x"].tolist() == [1.0, 1.0]
    torch.save({"weights": torch.ones(1)}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not a ppo checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")
    data = (tmp_path / "ok.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or not a checkpoint"):
        load_checkpoint(tmp_path / "cut.pt")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


def test_same_seed_gives_identical_progress_apart_from_timing(tmp_path):
    config = small(num_envs=2, num_steps=128, total_steps=768)
    for name in ("a", "b", "c"):
        (tmp_path / name).mkdir()
    train(config, tmp_path / "a")
    train(config, tmp_path / "b")
    train(config.replace(seed=1), tmp_path / "c")
    a, b, c = (pd.read_csv(tmp_path / n / "progress.csv").drop(columns=list(TIMING_COLUMNS)) for n in "abc")
    pd.testing.assert_frame_equal(a, b)
    assert not a.equals(c)
    assert (tmp_path / "a" / "episodes.csv").read_text() == (tmp_path / "b" / "episodes.csv").read_text()


def test_discrete_action_space_trains(tmp_path):
    result = train(Config(env_id="CartPole-v1", total_steps=512, num_envs=1, num_steps=128, num_minibatches=4,
                          update_epochs=2), tmp_path)
    assert result.status == "finished"
    progress = pd.read_csv(tmp_path / "progress.csv")
    assert progress["action_std"].isna().all() and progress["entropy"].gt(0).all()


def test_nan_reward_stops_the_run_and_keeps_the_last_good_state(tmp_path):
    config = small(env_id="tests.fake_envs:nan_after_600", total_steps=2048)
    result = train(config, tmp_path)
    assert result.status == "failed"
    assert "became nan in iteration 3" in result.message
    state = load_checkpoint(tmp_path / "checkpoint.pt")
    assert state["iteration"] == 2 and state["global_step"] == 512
    assert all(torch.isfinite(t).all() for t in state["model"].values())
    assert len(pd.read_csv(tmp_path / "progress.csv")) == 2


def test_interrupt_saves_the_last_finished_iteration(tmp_path, monkeypatch):
    interrupt_at_update(monkeypatch, 3)
    result = train(small(checkpoint_interval=100), tmp_path)
    assert result.status == "interrupted" and "after iteration 2" in result.message
    assert load_checkpoint(tmp_path / "checkpoint.pt")["global_step"] == 512
    assert len(pd.read_csv(tmp_path / "progress.csv")) == 2


@pytest.mark.slow
def test_learns_inverted_pendulum(trained_pendulum):
    result = trained_pendulum
    assert result.final_return is not None and result.final_return >= LEARN_THRESHOLD, result


@pytest.mark.slow
def test_a_sign_flipped_update_does_not_reach_the_threshold(tmp_path, monkeypatch):
    """The learning threshold is one that a broken update misses."""
    real, real_fused = losses.clipped_surrogate, fused.forward_backward
    monkeypatch.setattr(losses, "clipped_surrogate", lambda *a, **k: -real(*a, **k))

    def fused_flipped(params, grads, obs, actions, old_logprobs, old_values, returns, advantages, *rest):
        return real_fused(params, grads, obs, actions, old_logprobs, old_values, returns, -advantages, *rest)

    monkeypatch.setattr(fused, "forward_backward", fused_flipped)  # the path Gaussian policies take
    result = train(LEARN, tmp_path)
    assert result.final_return is not None and result.final_return < LEARN_THRESHOLD / 5, result


@pytest.mark.parametrize("env_id, num_envs", [("InvertedPendulum-v5", 2), (POINT, 1), ("CartPole-v1", 2)])
def test_interrupted_and_resumed_run_equals_the_uninterrupted_one(tmp_path, monkeypatch, env_id, num_envs):
    config = Config(env_id=env_id, total_steps=6 * 128 * num_envs, num_steps=128, num_envs=num_envs,
                    num_minibatches=4, update_epochs=2, hidden_sizes=(16, 16), checkpoint_interval=2)
    full, cut = tmp_path / "full", tmp_path / "cut"
    full.mkdir()
    cut.mkdir()
    train(config, full)

    with monkeypatch.context() as m:
        interrupt_at_update(m, 4)  # stops during iteration 4: the checkpoint holds iteration 3
        assert train(config, cut).status == "interrupted"
    state = load_checkpoint(cut / "checkpoint.pt")
    assert state["iteration"] == 3
    # rows written after the checkpoint, and a row cut off by a hard kill, must not survive a resume
    with open(cut / "progress.csv", "a") as f:
        f.write("9999,4,1.0,1,,,0,0,0,0,0,0,0,0,0,1\n9999,5,1.0")
    with open(cut / "episodes.csv", "a") as f:
        f.write("9999,1.0,3\n99")

    resumed = train(config, cut, resume=True)
    assert resumed.status == "finished" and resumed.global_step == config.total_steps
    drop = list(TIMING_COLUMNS)
    pd.testing.assert_frame_equal(pd.read_csv(full / "progress.csv").drop(columns=drop),
                                  pd.read_csv(cut / "progress.csv").drop(columns=drop))
    assert (full / "episodes.csv").read_text() == (cut / "episodes.csv").read_text()
    a, b = load_checkpoint(full / "checkpoint.pt"), load_checkpoint(cut / "checkpoint.pt")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_resume_extends_a_finished_run(tmp_path):
    config = small(total_steps=512)
    train(config, tmp_path)
    longer = config.replace(total_steps=1024)
    result = train(longer, tmp_path, resume=True)
    assert result.status == "finished" and result.global_step == 1024
    progress = pd.read_csv(tmp_path / "progress.csv")
    assert progress["iteration"].tolist() == [1, 2, 3, 4]
    assert Config.from_json((tmp_path / "config.json").read_text()).total_steps == 1024
    with pytest.raises(ValueError, match="only total_steps may change"):
        train(longer.replace(lr=1e-3), tmp_path, resume=True)


@pytest.mark.slow
def test_compiled_loss_gives_the_eager_update(tmp_path):
    """--compile changes speed, not the update: same parameters after a full update to 1e-5."""
    from ppo_cli.optim import make_optimizer
    from ppo_cli.update import make_loss_fn

    results = []
    for compiled in (False, True):
        config = Config(env_id=POINT, total_steps=256, num_envs=1, num_steps=256, num_minibatches=4, update_epochs=3,
                        compile=compiled, dual_clip=3.0, ent_coef=0.01)
        agent = ActorCritic(3, 2, (16, 16), seed=0)
        optimizer = make_optimizer(agent, config)
        batch = _random_batch(256)
        with torch.no_grad():
            batch["logprobs"] = agent.evaluate(batch["obs"], batch["actions"])[0] - 0.1 * batch["advantages"]
        stats = ppo_update(agent, optimizer, batch, config, np.random.default_rng(0), make_loss_fn(agent, config))
        results.append((stats, [p.detach().clone() for p in agent.parameters()]))
    (eager_stats, eager_params), (comp_stats, comp_params) = results
    for a, b in zip(eager_params, comp_params):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert comp_stats.approx_kl == pytest.approx(eager_stats.approx_kl, rel=1e-3, abs=1e-7)
    assert comp_stats.value_loss == pytest.approx(eager_stats.value_loss, rel=1e-4)


def test_compile_failure_falls_back_to_eager(monkeypatch, caplog):
    from ppo_cli.update import make_loss_fn

    def broken(fn, **kwargs):
        def fail(*args):
            raise RuntimeError("no C compiler")
        return fail

    monkeypatch.setattr(torch, "compile", broken)
    config = Config(env_id=POINT, total_steps=64, num_envs=1, num_steps=64, num_minibatches=1, compile=True)
    agent = ActorCritic(3, 2, (8,), seed=0)
    batch = _random_batch(8)
    loss_fn = make_loss_fn(agent, config)
    loss, terms, logratio = loss_fn(batch["obs"], batch["actions"], batch["logprobs"], batch["values"],
                                    batch["returns"], batch["advantages"])
    assert torch.isfinite(loss) and terms.shape == (3,) and logratio.shape == (8,)
    assert "torch.compile failed (RuntimeError: no C compiler); training eagerly" in caplog.text


def _filled_storage(num_steps: int = 6, num_envs: int = 3, obs_dim: int = 3, seed: int = 0):
    from ppo_cli.rollout import RolloutStorage

    rng = np.random.default_rng(seed)
    storage = RolloutStorage(num_steps, num_envs, obs_dim, (2,))
    storage.obs[:] = rng.standard_normal(storage.obs.shape)
    storage.rewards[:] = rng.standard_normal(storage.rewards.shape)
    storage.terminated[2, 0] = True
    storage.truncated[3, 1] = storage.truncated[5, 2] = True
    storage.final_obs[storage.truncated] = rng.standard_normal((2, obs_dim))
    return storage, rng.standard_normal((num_envs, obs_dim)).astype(np.float32)


def test_recompute_advantages_is_gae_with_the_current_critic():
    from ppo_cli.rollout import gae
    from ppo_cli.update import recompute_advantages

    storage, last_obs = _filled_storage()
    agent = ActorCritic(3, 2, (8,), seed=0)
    config = Config(env_id=POINT, total_steps=18, num_steps=6, num_envs=3, num_minibatches=1, gae_lambda=0.9)
    with torch.no_grad():
        for p in agent.parameters():
            p.normal_()  # an output layer that is not near 0, so values matter
        value = lambda x: agent.value(torch.from_numpy(np.asarray(x, dtype=np.float32))).numpy()  # noqa: E731
        values = value(storage.obs.reshape(18, 3)).reshape(6, 3)
        nxt = np.vstack([values[1:], value(last_obs)[None]])
        for t, e in zip(*np.nonzero(storage.truncated)):  # truncation: V(final obs), by hand
            nxt[t, e] = value(storage.final_obs[t, e][None])[0]
    # the recursion is cut at the termination and both truncations
    expected_adv, expected_ret = gae(storage.rewards, values, nxt, storage.terminated,
                                     storage.terminated | storage.truncated, 0.99, 0.9)
    advantages, returns = recompute_advantages(agent, storage, last_obs, config)
    np.testing.assert_allclose(advantages.numpy(), expected_adv.reshape(18), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(returns.numpy(), expected_ret.reshape(18), rtol=1e-5, atol=1e-5)
    assert storage.terminated[2, 0] and abs(expected_adv[2, 0] - (storage.rewards[2, 0] - values[2, 0])) < 1e-5


def test_recompute_adv_changes_the_update_only_after_the_first_epoch():
    calls = []
    agent = ActorCritic(3, 2, (8,), seed=0)
    batch = _random_batch(64)

    def recompute():
        calls.append(1)
        return batch["advantages"] * 0.0, batch["returns"]

    config = Config(env_id=POINT, total_steps=64, num_envs=1, num_steps=64, num_minibatches=4, update_epochs=3)
    optimizer = torch.optim.Adam(agent.parameters(), lr=1e-3, eps=1e-5)
    ppo_update(agent, optimizer, batch, config, np.random.default_rng(0), recompute=recompute)
    assert len(calls) == 2  # before epochs 2 and 3


def test_norm_adv_off_keeps_the_advantage_scale():
    """Without per-minibatch normalisation, scaling the advantages scales the policy loss."""
    batch = _random_batch(64)
    batch["advantages"] = batch["advantages"] + 5.0
    losses_by_scale = {}
    for norm in (True, False):
        for scale in (1.0, 10.0):
            agent = ActorCritic(3, 2, (8,), seed=0)
            with torch.no_grad():
                batch["logprobs"] = agent.evaluate(batch["obs"], batch["actions"])[0]
            scaled = {**batch, "advantages": batch["advantages"] * scale}
            config = Config(env_id=POINT, total_steps=64, num_envs=1, num_steps=64, num_minibatches=1, update_epochs=1,
                            norm_adv=norm)
            optimizer = torch.optim.Adam(agent.parameters(), lr=1e-3, eps=1e-5)
            stats = ppo_update(agent, optimizer, scaled, config, np.random.default_rng(0))
            losses_by_scale[norm, scale] = stats.policy_loss
    # ratio 1 on the first step: the loss is -mean(A)
    assert losses_by_scale[True, 1.0] == pytest.approx(0.0, abs=1e-6)
    assert losses_by_scale[True, 10.0] == pytest.approx(0.0, abs=1e-6)
    assert losses_by_scale[False, 1.0] == pytest.approx(-float(batch["advantages"].mean()), rel=1e-5)
    assert losses_by_scale[False, 10.0] == pytest.approx(10 * losses_by_scale[False, 1.0], rel=1e-5)


def test_init_log_std_sets_the_initial_action_std(tmp_path):
    result = train(small(init_log_std=-1.0, total_steps=256, update_epochs=1), tmp_path)
    assert result.ok
    agent = ActorCritic(2, 1, (16, 16), seed=0, init_log_std=-1.0)
    assert torch.allclose(agent.log_std.detach(), torch.tensor([-1.0]))
    first_std = pd.read_csv(tmp_path / "progress.csv")["action_std"].iloc[0]
    assert first_std == pytest.approx(np.exp(-1.0), rel=0.05)  # one small update from exp(-1)


def test_flat_adam_follows_plain_adam_and_resumes_from_its_state():
    from ppo_cli.optim import FlatAdam

    config = Config(env_id=POINT, total_steps=256, num_envs=1, num_steps=256, num_minibatches=4, update_epochs=3,
                    max_grad_norm=0.1)  # small: the clip acts on every step
    batch = _random_batch(256)
    plain, flat = ActorCritic(3, 2, (8, 8), seed=0), ActorCritic(3, 2, (8, 8), seed=0)
    plain_opt = torch.optim.Adam(plain.parameters(), lr=1e-3, eps=1e-5)
    flat_opt = FlatAdam(flat, lr=1e-3, eps=1e-5)
    for _ in range(3):
        ppo_update(plain, plain_opt, batch, config, np.random.default_rng(0))
        ppo_update(flat, flat_opt, batch, config, np.random.default_rng(0))
    for p, q in zip(plain.parameters(), flat.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-4, atol=1e-5)
        assert q.data_ptr() >= flat_opt.flat.data_ptr()  # still views into the flat tensor
    moved = [p.detach().clone() for p in flat.parameters()]
    assert any(not torch.equal(m, p) for m, p in zip(moved, ActorCritic(3, 2, (8, 8), seed=0).parameters()))

    # a FlatAdam restored from a plain Adam's state dict continues like the plain one
    resumed_agent = ActorCritic(3, 2, (8, 8), seed=0)
    resumed_agent.load_state_dict(plain.state_dict())
    resumed = FlatAdam(resumed_agent, lr=1e-3, eps=1e-5)
    resumed.load_state_dict(plain_opt.state_dict())
    ppo_update(plain, plain_opt, batch, config, np.random.default_rng(1))
    ppo_update(resumed_agent, resumed, batch, config, np.random.default_rng(1))
    for p, q in zip(plain.parameters(), resumed_agent.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("changes", [{}, {"clip_vloss": True, "ent_coef": 0.01, "dual_clip": 3.0, "norm_adv": True}])
def test_the_fused_gaussian_loss_trains_like_the_composed_one(changes):
    import functools

    from ppo_cli.fused import FusedLoss
    from ppo_cli.losses import minibatch_loss
    from ppo_cli.optim import FlatAdam
    from ppo_cli.update import make_loss_fn

    config = Config(env_id=POINT, total_steps=256, num_envs=1, num_steps=256, num_minibatches=4, update_epochs=3,
                    **changes)
    batch = _random_batch(256)
    reference, fast = ActorCritic(3, 2, (8, 8), seed=0), ActorCritic(3, 2, (8, 8), seed=0)
    assert isinstance(make_loss_fn(fast, config), FusedLoss)
    reference_opt = torch.optim.Adam(reference.parameters(), lr=1e-3, eps=1e-5)
    fused_opt = FlatAdam(fast, lr=1e-3, eps=1e-5)  # the trainer's path: flat input, lean Adam step, numpy clip
    assert make_loss_fn(fast, config, fused_opt).flat is fused_opt.flat
    for _ in range(3):
        a = ppo_update(reference, reference_opt, batch, config, np.random.default_rng(0),
                       functools.partial(minibatch_loss, reference, config))
        b = ppo_update(fast, fused_opt, batch, config, np.random.default_rng(0))
        for name in ("policy_loss", "value_loss", "entropy", "approx_kl", "clipfrac"):
            assert getattr(b, name) == pytest.approx(getattr(a, name), rel=1e-4, abs=1e-6), name
    for p, q in zip(reference.parameters(), fast.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-4, atol=1e-5)
    assert not torch.equal(fast.log_std, ActorCritic(3, 2, (8, 8), seed=0).log_std)  # it did train
