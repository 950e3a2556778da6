"""Golden runs: small fixed trainings whose rows are committed, so a change that alters training fails.

Every other test compares a run with itself (resume against an uninterrupted run, fused against
autograd) or with a hand computation of one piece. None notices a commit that changes what
``ppo train`` computes as a whole: a reordered random draw, a filter updated one step later, a
changed default. These cases do: each trains a few iterations and compares every column of
``progress.csv`` and ``episodes.csv`` (timing aside) with ``tests/golden/<case>_progress.csv``
and ``<case>_episodes.csv``.

The comparison has a tolerance, not bit equality, because a run's floating point depends on the
CPU: numpy's OpenBLAS, numpy's SIMD loops and torch pick kernels by instruction set, and those
round differently (measured in :data:`KERNEL_DRIFT`). Same machine, same code: identical rows
(``test_trainer``). Another CPU: rows within the tolerance here, and a 1M-step run a different
sample (docs/benchmarks.md, *Reproducibility*). A real change to training moves the rows far more
than that (``test_golden`` proves it for small changes).

A deliberate change to training regenerates the files, and its commit says why they changed::

    .venv/bin/python -m tests.golden          # rewrites tests/golden/*.csv
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from ppo_cli.config import Config

GOLDEN_DIR = Path(__file__).parent / "golden"

CASES: dict[str, Config] = {
    # the defaults on a MuJoCo task whose episodes end early (falls), so resets, terminal values and
    # the filters' episode bookkeeping are all in the rows
    "hopper": Config(env_id="Hopper-v5", seed=3, total_steps=4096, num_envs=4, num_steps=256, num_minibatches=8,
                     update_epochs=4),
    # the other paths: a DMC task (RandomState seeding, flattening, truncation at the time limit cut
    # by staggered resets), action repeat, value clipping, advantage normalisation, the KL stop,
    # the autograd update, no annealing
    "dmc": Config(env_id="dm_control/cartpole-swingup-v0", seed=5, total_steps=4096, num_envs=4, num_steps=256,
                  num_minibatches=4, update_epochs=4, action_repeat=2, stagger_resets=True, clip_vloss=True,
                  norm_adv=True, lr=1e-3, target_kl=0.0004, update="autograd", anneal_lr=False,
                  hidden_sizes=(32, 32)),
}

RTOL = 1e-3
"""Relative tolerance of a golden comparison (of the value, plus this much of the column's largest
magnitude, for columns that pass near zero). Other kernels move a case's rows by at most
:data:`KERNEL_DRIFT`; a 1% change to one setting moves them by more than this (``test_golden``)."""

KERNEL_DRIFT = 3e-5
"""Measured: the largest change of a column (over its largest magnitude) when this machine's kernels
are pinned to another instruction set (``OPENBLAS_CORETYPE=Haswell ATEN_CPU_CAPABILITY=avx2
MKL_ENABLE_INSTRUCTIONS=AVX2 NPY_DISABLE_CPU_FEATURES="X86_V4 AVX512_ICL AVX512_SPR"``, against the
AVX-512 ones the rows were written with): 2.5e-5 (dmc policy_loss), 5e-7 or less elsewhere."""

ATOL = {"clipfrac": 1 / 128, "update_fraction": 0.0}
"""Absolute slack where a count can flip: one sample of a 128-sample minibatch crossing the clip edge
moves clipfrac by 1/128 at most; an update cut one minibatch earlier by the KL stop is a change."""

EXACT = ("global_step", "iteration", "episodes", "episodic_length", "length")
"""Counts: equal, whatever the CPU (an episode that ends one step apart is a change in training)."""


def run_case(config: Config, folder: Path) -> dict[str, pd.DataFrame]:
    """Train ``config`` (a case) into ``folder``; its progress and episode rows, timing columns dropped."""
    from ppo_cli.diagnostics import TIMING_COLUMNS
    from ppo_cli.trainer import train

    folder.mkdir(parents=True, exist_ok=True)
    train(config, folder)
    progress = pd.read_csv(folder / "progress.csv").drop(columns=list(TIMING_COLUMNS))
    return {"progress": progress, "episodes": pd.read_csv(folder / "episodes.csv")}


def golden_path(name: str, table: str) -> Path:
    return GOLDEN_DIR / f"{name}_{table}.csv"


def differences(actual: pd.DataFrame, golden: pd.DataFrame, label: str) -> list[str]:
    """Where ``actual`` departs from ``golden`` beyond the tolerance: one line per column (empty: none)."""
    if list(actual.columns) != list(golden.columns):
        return [f"{label}: columns {list(actual.columns)} != {list(golden.columns)}"]
    if len(actual) != len(golden):
        return [f"{label}: {len(actual)} rows != {len(golden)}"]
    found = []
    for column in golden.columns:
        a, g = actual[column].to_numpy(dtype=float), golden[column].to_numpy(dtype=float)
        if column in EXACT:
            bad = ~((a == g) | (np.isnan(a) & np.isnan(g)))
        else:
            scale = np.nanmax(np.abs(g)) if np.isfinite(g).any() else 0.0
            slack = ATOL.get(column, RTOL * scale) + RTOL * np.abs(g)
            bad = ~((np.abs(a - g) <= slack) | (np.isnan(a) & np.isnan(g)))
        if bad.any():
            row = int(np.argmax(bad))
            found.append(f"{label}.{column}: {bad.sum()} row(s) differ, first row {row}: "
                         f"{float(a[row])!r} != {float(g[row])!r}")
    return found


def write_all() -> None:
    GOLDEN_DIR.mkdir(exist_ok=True)
    for name in CASES:
        with tempfile.TemporaryDirectory() as tmp:
            for table, frame in run_case(CASES[name], Path(tmp) / name).items():
                frame.to_csv(golden_path(name, table), index=False)
                print(f"wrote {golden_path(name, table)} ({len(frame)} rows)")


if __name__ == "__main__":
    write_all()
