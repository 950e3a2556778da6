"""Fault injection: interrupt 2-seed runs at random moments, resume them, and compare with an uninterrupted run.

    python benchmarks/faults.py --rounds 20            # about 10 minutes on 2 cores
    python benchmarks/faults.py --rounds 3 --seed 7    # a quick look

Each round starts ``ppo train Pendulum-v1 --seeds 2 --jobs 2`` (a small config, checkpoints every
4 of 40 iterations) in a session of its own, waits a random time (from the first second of start-up
to the end of an uninterrupted run), and sends SIGINT, SIGTERM or SIGKILL to the launcher alone or
to its whole process group. With probability 1/2 the first resume is interrupted the same way
(within the first half of that time). Then
``ppo train --resume`` runs until it succeeds (a run stopped before its folder existed is started
again instead). At the end every seed's ``progress.csv`` and ``episodes.csv`` are compared with
those of an uninterrupted run of the same command, timing columns aside.

Also counted: *orphans*, worker processes (their PIDs read from the seed folders' lock files)
still alive 30 s after their launcher ended, and *lost rows*, rows of the uninterrupted run
missing from the resumed one. The last line is machine-readable:
``rounds=N identical=N lost_rows=0 orphans=0``.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
COMMAND = ["train", "Pendulum-v1", "--seeds", "2", "--jobs", "2", "--total-steps", "10240", "--num-envs", "2",
           "--num-steps", "128", "--num-minibatches", "4", "--update-epochs", "2", "--hidden-sizes", "16,16",
           "--checkpoint-interval", "4", "--quiet"]
TIMING = ["time_s", "sps"]
SIGNALS = {"INT": signal.SIGINT, "TERM": signal.SIGTERM, "KILL": signal.SIGKILL}


def ppo(*args: str) -> list[str]:
    return [sys.executable, "-m", "ppo_cli", *args]


def start(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)


def worker_pids(run_dir: Path) -> set[int]:
    pids = set()
    for lock in run_dir.glob("seed_*/.lock"):
        text = lock.read_text().strip() if lock.is_file() else ""
        if text.isdigit():
            pids.add(int(text))
    return pids


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead; one of ours that lingers is not
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def interrupt(proc: subprocess.Popen, run_dir: Path, delay: float, how: str, target: str,
              pids: set[int]) -> tuple[int, str]:
    """Wait ``delay`` s (noting worker PIDs), send the signal, wait for the launcher; returns its exit code."""
    deadline = time.monotonic() + delay
    while time.monotonic() < deadline and proc.poll() is None:
        pids |= worker_pids(run_dir)
        time.sleep(0.02)
    pids |= worker_pids(run_dir)
    sent = proc.poll() is None
    if sent:
        try:
            if target == "group":
                os.killpg(proc.pid, SIGNALS[how])
            else:
                os.kill(proc.pid, SIGNALS[how])
        except ProcessLookupError:
            sent = False
    try:
        _, stderr = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        _, stderr = proc.communicate()
        return -999, "launcher hung after the signal"
    return proc.returncode, stderr if sent else "not sent: the command had ended"


def count_orphans(pids: set[int], grace: float = 30.0) -> int:
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(alive(p) for p in pids):
        time.sleep(0.2)
    left = [p for p in pids if alive(p)]
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    return len(left)


def compare(run_dir: Path, reference: Path) -> tuple[bool, int]:
    """(identical, rows of the reference missing) over both seeds' CSVs."""
    identical, lost = True, 0
    for seed in (0, 1):
        for name, key in (("progress.csv", "iteration"), ("episodes.csv", None)):
            want = pd.read_csv(reference / f"seed_{seed}" / name)
            path = run_dir / f"seed_{seed}" / name
            have = pd.read_csv(path) if path.is_file() else want.iloc[0:0]
            drop = [c for c in TIMING if c in want.columns]
            want, have = want.drop(columns=drop), have.drop(columns=drop)
            lost += max(0, len(want) - len(have)) if key is None else len(set(want[key]) - set(have[key]))
            identical &= want.shape == have.shape and bool((want.fillna(-1e300) == have.fillna(-1e300)).all().all())
    return identical, lost


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0, help="seed of the random delays and signals")
    parser.add_argument("--out", type=Path, default=None, help="working folder [default: a temporary one]")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    work = Path(args.out or tempfile.mkdtemp(prefix="ppo-faults-"))
    work.mkdir(parents=True, exist_ok=True)

    began = time.monotonic()
    done = subprocess.run(ppo(*COMMAND, "--out", str(work / "reference")), capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    if done.returncode != 0:
        raise SystemExit(f"the uninterrupted run failed:\n{done.stderr}")
    duration = time.monotonic() - began
    reference = work / "reference" / "Pendulum-v1" / "default"
    print(f"uninterrupted run: {duration:.1f} s; delays drawn from 0.1-{duration:.1f} s (resumes: half that)",
          flush=True)

    identical_rounds = lost_rows = orphans = delivered = 0
    for k in range(1, args.rounds + 1):
        out = work / f"round_{k}"
        run_dir = out / "Pendulum-v1" / "default"
        events, pids, lost_orphans = [], set(), 0
        for attempt in range(6):
            interrupted = attempt == 0 or (attempt == 1 and rng.random() < 0.5)
            if run_dir.joinpath("run.json").is_file():
                proc = start(ppo("train", "--resume", str(run_dir), "--quiet"))
            else:
                shutil.rmtree(out, ignore_errors=True)
                proc = start(ppo(*COMMAND, "--out", str(out)))
            if not interrupted:
                code, stderr = interrupt(proc, run_dir, 1e9, "INT", "parent", pids)
                events.append(f"resume -> {code}")
                if code == 0:
                    break
                continue
            span = duration if attempt == 0 else duration / 2  # a resume has less left to do
            delay, how, target = rng.uniform(0.1, span), rng.choice(list(SIGNALS)), rng.choice(["parent", "group"])
            code, stderr = interrupt(proc, run_dir, delay, how, target, pids)
            late = " (it had ended)" if stderr.startswith("not sent") else ""
            delivered += not late
            events.append(f"SIG{how} to {target} at {delay:.1f} s{late} -> {code}")
            if "Traceback" in stderr:
                events.append("TRACEBACK: " + stderr.strip().splitlines()[-1])
            lost_orphans += count_orphans(pids)  # workers must be gone before anything resumes
            pids.clear()
        same, lost = compare(run_dir, reference) if run_dir.is_dir() else (False, -1)
        identical_rounds += same
        lost_rows += max(lost, 0)
        orphans += lost_orphans
        print(f"round {k:>2}: {'identical' if same else 'DIFFERENT'}, lost rows {lost}, orphans {lost_orphans}; "
              f"{'; '.join(events)}", flush=True)
    print(f"{delivered} signals delivered while a command ran (the others arrived after it had ended)")
    print(f"rounds={args.rounds} identical={identical_rounds} lost_rows={lost_rows} orphans={orphans}")
    if args.out is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
