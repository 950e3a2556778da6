"""Does a local sweep use its cores? Total steps/s of ``ppo sweep --jobs N`` against N x one job alone.

    python benchmarks/sweep_throughput.py                 # N = the number of cores; about 10 minutes on 2
    python benchmarks/sweep_throughput.py --steps 50000 --repeats 1

Alternates, ``--repeats`` times: one ``ppo train hopper`` job alone, then ``ppo sweep hopper`` of N jobs
(one grid point, N seeds, ``--jobs N``), each job ``--steps`` steps of the default config. Two
figures per sweep, as ratios to the one job just before it (the machine's speed drifts):

* training rate: the sum over the sweep's jobs of each job's steps / its own training time
  (``time_s`` of its last ``progress.csv`` row), against the lone job's rate: the issue's
  ">= 0.8 x N x one job alone";
* whole process: N x the lone job's wall time / the sweep's wall time (start-up, ranking and the
  figure included).

The last line is machine-readable: ``jobs=N training_ratio=... whole_process_ratio=...`` (medians).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent


def ppo(*args: str) -> float:
    """Run ``python -m ppo_cli ARGS``; returns its wall time (s)."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "ppo_cli", *args], check=True, stdout=subprocess.DEVNULL,
                   env={**os.environ, "PYTHONPATH": str(ROOT)})
    return time.perf_counter() - start


def rate(seed_dir: Path) -> float:
    last = pd.read_csv(seed_dir / "progress.csv").iloc[-1]
    return float(last["global_step"]) / float(last["time_s"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--steps", type=int, default=102_400)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    common = ["--total-steps", str(args.steps), "--quiet"]
    training, whole = [], []
    with tempfile.TemporaryDirectory(prefix="ppo-sweep-bench-") as work:
        for k in range(args.repeats):
            alone_wall = ppo("train", "hopper", *common, "--out", f"{work}/alone{k}")
            alone = rate(next(Path(work, f"alone{k}").glob("*/default/seed_0")))
            sweep_wall = ppo("sweep", "hopper", "--grid", "lr=3e-4", "--seeds", str(args.jobs), "--jobs",
                             str(args.jobs), *common, "--out", f"{work}/sweep{k}")
            rates = [rate(d) for d in Path(work, f"sweep{k}").glob("sweeps/sweep/*/*/seed_*")]
            training.append(sum(rates) / (args.jobs * alone))
            whole.append(args.jobs * alone_wall / sweep_wall)
            print(f"run {k + 1}: one job alone {alone:.0f} steps/s ({alone_wall:.1f} s); sweep of {args.jobs}: "
                  f"{' + '.join(f'{r:.0f}' for r in rates)} = {sum(rates):.0f} steps/s ({sweep_wall:.1f} s): "
                  f"training {training[-1]:.2f}, whole process {whole[-1]:.2f} of {args.jobs} x one job",
                  flush=True)
    print(f"jobs={args.jobs} training_ratio={statistics.median(training):.2f} "
          f"whole_process_ratio={statistics.median(whole):.2f}")


if __name__ == "__main__":
    main()
