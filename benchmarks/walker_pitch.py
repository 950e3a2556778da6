"""Split a DMC walker policy's evaluation episodes by the start state's torso pitch.

    python benchmarks/walker_pitch.py results/benchmark/dm_control_walker-walk-v0/elu256/seed_0

DMC starts the walker at a random torso pitch (``rooty``, uniform in [-pi, pi]); docs/benchmarks.md
reads walker-walk's two groups of episodes through it: from a backward tilt (pitch < 0) a policy
either stands up or crawls on its knees. This plays the episodes ``ppo eval`` plays (deterministic,
the first reset seeded with ``--seed``, so the returns are ``ppo eval``'s) and prints, per pitch
sign, the episodes, mean return, how many score below 500, and the median over episodes of the
torso height over each episode's last 200 steps (about 1.2-1.3 m standing, 0.4-0.8 m kneeling).
``--csv FILE`` writes one row per episode (pitch, return, torso height).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pandas as pd

from ppo_cli.checkpoint import CheckpointError
from ppo_cli.envs import make_env
from ppo_cli.evaluate import load_agent, run_episodes
from ppo_cli.files import atomic_write_text

TAIL = 200
"""Steps at the end of an episode whose torso height is the episode's posture."""


class Posture(gym.Wrapper):
    """Records the walker's torso pitch at each reset and its torso height after each step."""

    def __init__(self, env: gym.Env):
        super().__init__(env)
        self.physics = env.unwrapped._env.physics  # Shimmy's wrapper holds the dm_control environment
        self.pitches: list[float] = []
        self.heights: list[list[float]] = []

    def reset(self, **kwargs):
        out = self.env.reset(**kwargs)
        self.pitches.append(float(np.asarray(self.physics.named.data.qpos["rooty"]).ravel()[0]))
        self.heights.append([])
        return out

    def step(self, action):
        out = self.env.step(action)
        self.heights[-1].append(float(self.physics.torso_height()))
        return out


def play(checkpoint: Path, episodes: int, seed: int = 0) -> pd.DataFrame:
    """One row per episode, played by ``ppo eval``'s own loop: ``pitch`` at the start, ``return``,
    ``torso_height`` (median of the last :data:`TAIL` steps). Raises ValueError unless the
    checkpoint is a DMC walker's."""
    loaded = load_agent(checkpoint)
    env_id = loaded.config.env_id
    if not env_id.startswith("dm_control/walker-"):
        raise ValueError(f"{checkpoint} is a policy for {env_id}; this reads DMC walker tasks only "
                         "(dm_control/walker-walk, -run, -stand)")
    env = Posture(make_env(env_id, action_repeat=loaded.config.action_repeat))
    try:
        returns, _ = run_episodes(env, loaded.policy, loaded.obs_filter, episodes, seed)
    finally:
        env.close()
    return pd.DataFrame({"episode": range(episodes), "pitch": env.pitches, "return": returns,
                         "torso_height": [float(np.median(h[-TAIL:])) for h in env.heights]})


def split(table: pd.DataFrame) -> pd.DataFrame:
    """The per-episode table grouped by the sign of the start pitch."""
    groups = table.assign(start=np.where(table["pitch"] < 0, "pitch < 0", "pitch >= 0")).groupby("start")
    return pd.DataFrame({"episodes": groups.size(), "mean_return": groups["return"].mean(),
                         "below_500": groups["return"].apply(lambda r: int((r < 500).sum())),
                         "torso_height_m": groups["torso_height"].median()})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="seed folders (their checkpoint.pt) or checkpoints")
    parser.add_argument("--episodes", type=int, default=50, help="episodes per checkpoint (ppo eval's DMC default)")
    parser.add_argument("--seed", type=int, default=0, help="the first reset's seed (ppo eval's --seed)")
    parser.add_argument("--csv", type=Path, help="write every episode's row here")
    args = parser.parse_args(argv)
    if args.episodes < 1:
        parser.error(f"argument --episodes: {args.episodes} is not a positive integer")
    tables = []
    for run in args.runs:
        checkpoint = run / "checkpoint.pt" if run.is_dir() else run
        try:
            table = play(checkpoint, args.episodes, args.seed)
        except (ValueError, CheckpointError, OSError) as exc:
            parser.error(str(exc))
        print(f"{run}: {len(table)} episodes, mean {table['return'].mean():.1f}")
        print(split(table).round(2).to_string())
        tables.append(table.assign(run=str(run)))
    if args.csv:
        atomic_write_text(args.csv, pd.concat(tables).to_csv(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
