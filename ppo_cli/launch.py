"""Run several seeds: in this process one after another, or as parallel worker processes.

Each seed's ``train`` reports through events ``(kind, seed, payload)``:
``("start", seed, None)``, ``("iteration", seed, row)`` and ``("done", seed, TrainResult)``.
A seed that raises or whose process dies is reported as ``failed`` and the others go on.
On Ctrl-C running seeds save their last finished iteration, seeds not started are skipped.
"""

from __future__ import annotations

import multiprocessing as mp
import queue
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ppo_cli.config import Config

Event = tuple[str, int, Any]


@dataclass(frozen=True)
class SeedJob:
    config: Config
    run_dir: Path
    resume: bool = False  # continue from run_dir/checkpoint.pt


def run_one(job: SeedJob, emit: Callable[[Event], None]) -> Any:
    """Train one seed, turning any exception into a ``failed`` result (details in ``error.txt``)."""
    from ppo_cli.trainer import TrainResult, train  # imported here: workers pay for torch, not the CLI

    seed = job.config.seed
    emit(("start", seed, None))
    try:
        result = train(job.config, job.run_dir, on_iteration=lambda row: emit(("iteration", seed, row)),
                       resume=job.resume)
    except KeyboardInterrupt:
        result = TrainResult(seed, str(job.run_dir), "interrupted", message="interrupted before training started")
    except Exception as exc:  # one bad seed must not take the others down
        (job.run_dir / "error.txt").write_text(traceback.format_exc(), encoding="utf-8")
        result = TrainResult(seed, str(job.run_dir), "failed",
                             message=f"{type(exc).__name__}: {exc} (traceback in {job.run_dir / 'error.txt'})")
    emit(("done", seed, result))
    return result


def _worker(job: SeedJob, events: Any) -> None:
    def emit(event: Event) -> None:
        try:
            events.put(event)
        except (OSError, ValueError):  # the parent went away: progress is best-effort
            pass

    run_one(job, emit)


def run_seeds(jobs: list[SeedJob], parallel: int, on_event: Callable[[Event], None]) -> list[Any]:
    """Run every job, at most ``parallel`` at once; returns one ``TrainResult`` per job, in order."""
    from ppo_cli.trainer import TrainResult

    results: dict[int, Any] = {}
    if parallel <= 1:
        for job in jobs:
            result = run_one(job, on_event)
            results[job.config.seed] = result
            if result.status == "interrupted":
                break
    else:
        results = _run_parallel(jobs, parallel, on_event)
    return [results.get(job.config.seed) or TrainResult(job.config.seed, str(job.run_dir), "interrupted",
                                                        message="not started")
            for job in jobs]


def _run_parallel(jobs: list[SeedJob], parallel: int, on_event: Callable[[Event], None]) -> dict[int, Any]:
    from ppo_cli.trainer import TrainResult

    ctx = mp.get_context("spawn")  # no fork of a process that may hold torch threads
    events = ctx.Queue()
    pending = list(jobs)
    running: dict[int, tuple[Any, SeedJob]] = {}
    results: dict[int, Any] = {}
    interrupted = False

    def handle(event: Event) -> None:
        if event[0] == "done":
            results[event[1]] = event[2]
        on_event(event)

    while pending or running:
        try:
            while pending and len(running) < parallel and not interrupted:
                job = pending.pop(0)
                process = ctx.Process(target=_worker, args=(job, events), name=f"ppo-seed-{job.config.seed}")
                process.start()
                running[job.config.seed] = (process, job)
            try:
                handle(events.get(timeout=0.2))
            except queue.Empty:
                pass
            for seed, (process, job) in list(running.items()):
                if process.exitcode is None:
                    continue
                if seed not in results:  # its last events may still be in the pipe
                    try:
                        while seed not in results:
                            handle(events.get(timeout=2.0))
                    except queue.Empty:
                        failed = TrainResult(seed, str(job.run_dir), "failed",
                                             message=f"worker process died with exit code {process.exitcode}")
                        handle(("done", seed, failed))
                process.join()
                del running[seed]
        except KeyboardInterrupt:
            interrupted = True  # the workers got the same signal and are saving their state
            pending.clear()
    return results
