"""Pool several runs of the learning benchmark into one estimate per task.

    python benchmarks/pool.py --out benchmarks/results/dmc/pooled \\
        benchmarks/results/dmc/tuned_all benchmarks/results/dmc/tuned_s5 \\
        benchmarks/results/dmc/tuned:cheetah-run,walker-run,reacher-hard

Each argument is a results folder of ``mujoco_suite.py`` (its ``seeds.csv``), optionally with
``:TASK,...`` to take only those tasks from it (an env id as ``seeds.csv`` spells it, or a DMC
``domain-task``). Two runs of the benchmark on other machines are two samples of the same code
(docs/benchmarks.md, *Reproducibility*), even on the same seeds: pooling them is the estimate to
quote, with its interval. Per task: the runs, the folders they come from, the evaluation IQM with
its 95% bootstrap interval (the same statistics as the suite's summary), mean +- std, and the
target where the suite has one. Written to ``OUT/pooled.csv`` and printed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from ppo_cli.config import task_family
from ppo_cli.files import atomic_write_text
from ppo_cli.plots.stats import iqm, stratified_bootstrap_ci

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mujoco_suite import TARGETS  # noqa: E402 - benchmarks/ is not a package


def parse_source(text: str) -> tuple[Path, list[str] | None]:
    """``FOLDER`` or ``FOLDER:task,task`` -> (folder, the tasks to take or None for all)."""
    folder, sep, tasks = text.partition(":")
    return Path(folder), ([t.strip() for t in tasks.split(",") if t.strip()] if sep else None)


def selects(task: str, env_id: str) -> bool:
    return env_id == task or task_family(env_id) in (task, f"dm_control/{task}")


def read_sources(sources: list[str]) -> pd.DataFrame:
    """The ``seeds.csv`` rows of every source (with a ``source`` column), only the tasks asked for."""
    frames = []
    for text in sources:
        folder, tasks = parse_source(text)
        path = folder / "seeds.csv"
        if not path.is_file():
            raise SystemExit(f"{text}: no seeds.csv in {folder}")
        rows = pd.read_csv(path)
        if tasks is not None:
            unknown = [t for t in tasks if not any(selects(t, env) for env in rows["env"].unique())]
            if unknown:
                raise SystemExit(f"{text}: {folder} has no task {', '.join(unknown)}; it has "
                                 f"{', '.join(sorted(rows['env'].unique()))}")
            rows = rows[[any(selects(t, env) for t in tasks) for env in rows["env"]]]
        frames.append(rows.assign(source=str(folder)))
    return pd.concat(frames, ignore_index=True)


def pool(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per task: runs, sources, evaluation IQM [95% CI], mean, std, target."""
    out = []
    for env_id, group in rows.groupby("env", sort=False):
        values = group["eval_mean"].to_numpy(dtype=float)
        center, (low, high) = float(iqm(values)), stratified_bootstrap_ci([values])
        target = TARGETS.get(task_family(env_id))
        out.append({"env": env_id, "runs": len(values), "sources": " ".join(dict.fromkeys(group["source"])),
                    "eval_iqm": center, "eval_iqm_ci_low": low, "eval_iqm_ci_high": high,
                    "eval_mean": float(values.mean()), "eval_std": float(values.std(ddof=1)) if len(values) > 1
                    else float("nan"), "target": target,
                    "met": None if target is None else center >= target})
    return pd.DataFrame(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sources", nargs="+", help="FOLDER or FOLDER:task,task (a mujoco_suite.py results folder)")
    parser.add_argument("--out", type=Path, required=True, help="folder for pooled.csv")
    args = parser.parse_args(argv)
    table = pool(read_sources(args.sources))
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "pooled.csv", table.to_csv(index=False))
    for row in table.itertuples():
        print(f"{row.env}: {row.runs} runs, evaluation IQM {row.eval_iqm:.0f} [{row.eval_iqm_ci_low:.0f}, "
              f"{row.eval_iqm_ci_high:.0f}], mean {row.eval_mean:.0f} +- {row.eval_std:.0f}"
              + ("" if row.target is None or row.target != row.target else f", target {row.target:.0f}"))
    print(f"pooled: {args.out / 'pooled.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
