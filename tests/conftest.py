import os
from pathlib import Path

import pandas as pd

import pytest

from ppo_cli.config import Config

# Users do not set MUJOCO_GL, so neither do the tests: `ppo eval` must choose a renderer itself.
for _name in ("MUJOCO_GL", "PYOPENGL_PLATFORM"):
    os.environ.pop(_name, None)

LEARN = Config(env_id="InvertedPendulum-v5", total_steps=20480, num_envs=1, num_steps=1024, num_minibatches=32)
LEARN_THRESHOLD = 500.0  # max 1000; a random policy scores ~5-10


@pytest.fixture(scope="session")
def trained_pendulum(tmp_path_factory):
    """One short InvertedPendulum run shared by the learning and evaluation tests."""
    from ppo_cli.trainer import train

    run_dir = tmp_path_factory.mktemp("pendulum") / "seed_0"
    run_dir.mkdir()
    return train(LEARN, run_dir)


class _Exploit:
    """Pickles to a call of os.system: unpickling it would create ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def write_malicious_checkpoint(path: Path, marker: Path) -> None:
    """A file that looks like a ppo checkpoint but runs code if loaded without ``weights_only``."""
    import torch

    torch.save({"format": "ppo_cli.checkpoint", "format_version": 1, "x": _Exploit(marker)}, path)


def interrupt_at_update(monkeypatch, n: int) -> None:
    """Make the trainer's ``n``-th ``ppo_update`` call raise KeyboardInterrupt (a Ctrl-C mid-run)."""
    from ppo_cli import trainer

    calls = {"n": 0}
    real = trainer.ppo_update

    def interrupting(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == n:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer, "ppo_update", interrupting)


def same_rows(a: Path, b: Path) -> bool:
    """Whether two seed folders hold the same progress.csv and episodes.csv, timing columns aside."""
    from ppo_cli.diagnostics import TIMING_COLUMNS

    for name in ("progress.csv", "episodes.csv"):
        x, y = pd.read_csv(a / name), pd.read_csv(b / name)
        drop = [c for c in TIMING_COLUMNS if c in x.columns]
        if not x.drop(columns=drop).equals(y.drop(columns=drop)):
            return False
    return True
