"""--stagger-resets: each environment's first episode cut at a random step up to the time limit."""

import numpy as np
import pandas as pd
from click.testing import CliRunner

from ppo_cli.checkpoint import load_checkpoint
from ppo_cli.cli import cli
from ppo_cli.envs import EnvBatch
from tests.conftest import interrupt_at_update, same_rows

LIMITED = "tests.fake_envs:point_with_time_limit"  # episodes of 20 steps: zero actions never terminate
SMALL = ["--num-envs", "4", "--num-steps", "4", "--num-minibatches", "4", "--update-epochs", "2",
         "--hidden-sizes", "16,16", "--quiet", "--trust-env"]


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def episode_ends(batch: EnvBatch, steps: int) -> list[list[int]]:
    """The steps (1, 2, ...) at which each environment's episodes were truncated, stepping zero actions."""
    batch.reset()
    ends: list[list[int]] = [[] for _ in range(batch.num_envs)]
    for step in range(1, steps + 1):
        _, _, terminated, truncated, _ = batch.step(np.zeros((batch.num_envs, 1)))
        assert not terminated.any()
        for i in np.flatnonzero(truncated):
            ends[i].append(step)
    return ends


def test_first_episodes_end_at_seeded_cuts_and_later_ones_run_to_the_limit():
    seeds = [11, 12, 13, 14, 15, 16]
    batch = EnvBatch(LIMITED, 6, seeds, stagger=True)
    cuts = batch.cuts.tolist()
    assert all(1 <= c <= 20 for c in cuts) and len(set(cuts)) > 1
    assert EnvBatch(LIMITED, 6, seeds, stagger=True).cuts.tolist() == cuts  # drawn from the seeds
    ends = episode_ends(batch, 70)
    for i, cut in enumerate(cuts):
        assert ends[i] == [cut + 20 * k for k in range(4) if cut + 20 * k <= 70]
    # a cut first episode is not one of the task's episodes: only full ones are logged (a cut of 20 is none)
    assert batch.finished and all(length == 20 for _, length in batch.finished)
    assert len(batch.finished) == sum(len(e) - (cut < 20) for e, cut in zip(ends, cuts))
    plain = EnvBatch(LIMITED, 6, seeds)
    assert episode_ends(plain, 45) == [[20, 40]] * 6 and len(plain.finished) == 12


def test_cuts_count_the_agents_steps_under_action_repeat():
    """A 20-frame limit held 3 frames at a time is an episode of 7 steps: cuts fall in 1..7."""
    batch = EnvBatch(LIMITED, 32, list(range(32)), action_repeat=3, stagger=True)
    assert set(batch.cuts.tolist()) <= set(range(1, 8)) and len(set(batch.cuts.tolist())) > 3
    ends = episode_ends(batch, 20)
    assert all(e[0] == c and e[1] == c + 7 for e, c in zip(ends, batch.cuts.tolist()))


def test_a_run_resumed_inside_the_first_episodes_equals_an_uninterrupted_one(tmp_path, monkeypatch):
    options = ["--total-steps", "256", "--checkpoint-interval", "1", "--stagger-resets", *SMALL]
    assert invoke("train", LIMITED, "--out", tmp_path, "--run-name", "full", *options).exit_code == 0
    with monkeypatch.context() as m:
        interrupt_at_update(m, 3)  # the checkpoint of iteration 2: 8 steps per environment, within 1..20
        assert invoke("train", LIMITED, "--out", tmp_path, "--run-name", "cut", *options).exit_code == 130
    run = tmp_path / "tests.fake_envs_point_with_time_limit"
    first = load_checkpoint(run / "cut" / "seed_0" / "checkpoint.pt")["envs"]["first"]
    assert first.any() and not first.all()  # some environments were cut already, some are still in their first
    assert invoke("train", "--resume", run / "cut", "--trust-env", "--quiet").exit_code == 0
    assert same_rows(run / "full" / "seed_0", run / "cut" / "seed_0")
    assert (pd.read_csv(run / "full" / "seed_0" / "episodes.csv")["length"] <= 20).all()


def test_stagger_without_a_time_limit_or_with_envpool_is_one_usage_error(tmp_path):
    result = invoke("train", "tests.fake_envs:PointEnv", "--stagger-resets", "--out", tmp_path, *SMALL)
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert ("--stagger-resets cuts first episodes within the time limit, and tests.fake_envs:PointEnv declares "
            "none (wrap it in gymnasium.wrappers.TimeLimit)") in " ".join(result.output.split())
    result = invoke("train", "hopper", "--stagger-resets", "--backend", "envpool", "--out", tmp_path, "--quiet")
    assert result.exit_code == 2
    assert "--stagger-resets needs the gymnasium --backend" in " ".join(result.output.split())
    assert not any(tmp_path.rglob("seed_*"))
