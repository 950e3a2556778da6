"""Run several seeds: in this process one after another, or as parallel worker processes.

Each job's ``train`` reports through events ``(kind, key, payload)``: ``("start", key, None)``,
``("iteration", key, row)`` and ``("done", key, TrainResult)``, where ``key`` is the job's
:attr:`SeedJob.ident` (its seed, unless the caller gives it a key: a sweep's jobs share seeds).
A seed that raises or whose process dies is reported as ``failed`` and the others go on.

Stopping (see :mod:`ppo_cli.signals`): the caller's :class:`~ppo_cli.signals.StopRequest` is the
one switch. Workers run in process groups of their own, so a signal reaches them only through
the launcher, which forwards every SIGINT, SIGTERM and SIGHUP it receives: running seeds save
their last finished iteration, seeds not started are not started (a third Ctrl-C kills workers
that two did not stop). Workers start with those
signals blocked until their handlers are in place (a Ctrl-C in the first second is never a
traceback), receive SIGTERM if the launcher dies (even by SIGKILL), and report through a pipe of
their own that breaks when the launcher is gone, so nothing can hang at exit.
"""

from __future__ import annotations

import multiprocessing as mp
import multiprocessing.connection
import os
import signal
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ppo_cli.config import Config
from ppo_cli.files import FolderBusy, atomic_write_text
from ppo_cli.layout import ERROR_FILE
from ppo_cli.signals import StopRequest, die_with_parent, signals_deferred, unblock_stop_signals

Event = tuple[str, int, Any]


@dataclass(frozen=True)
class SeedJob:
    config: Config
    run_dir: Path
    resume: bool = False  # continue from run_dir/checkpoint.pt
    key: Any = None  # what events name the job by (default: its seed)

    @property
    def ident(self) -> Any:
        return self.config.seed if self.key is None else self.key


def run_one(job: SeedJob, emit: Callable[[Event], None], stop: StopRequest | None = None) -> Any:
    """Train one seed, turning any exception into a ``failed`` result (details in ``error.txt``)."""
    seed, key = job.config.seed, job.ident
    try:
        from ppo_cli.trainer import TrainResult, train  # imported here: workers pay for torch, not the CLI
    except KeyboardInterrupt:  # a second Ctrl-C while torch loads
        from ppo_cli.trainer import TrainResult
        return _done(emit, key, TrainResult(seed, str(job.run_dir), "interrupted",
                                            message="interrupted before training started"))
    if stop is not None and stop.requested:
        return _done(emit, key, TrainResult(seed, str(job.run_dir), "interrupted", message="not started",
                                            signal=stop.signum))
    emit(("start", key, None))
    try:
        result = train(job.config, job.run_dir, on_iteration=lambda row: emit(("iteration", key, row)),
                       resume=job.resume, stop=stop)
    except KeyboardInterrupt:
        result = TrainResult(seed, str(job.run_dir), "interrupted", message="interrupted before training started",
                             signal=stop.signum if stop is not None else None)
    except FolderBusy as exc:  # someone else's folder: write nothing into it
        result = TrainResult(seed, str(job.run_dir), "failed", message=str(exc))
    except Exception as exc:  # one bad seed must not take the others down
        result = TrainResult(seed, str(job.run_dir), "failed", message=_failure_message(job.run_dir, exc))
    return _done(emit, key, result)


def _done(emit: Callable[[Event], None], key: Any, result: Any) -> Any:
    emit(("done", key, result))
    return result


def _failure_message(run_dir: Path, exc: Exception) -> str:
    """One line for the user; the traceback goes to ``error.txt`` (if it can be written)."""
    message = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, OSError) and exc.strerror and exc.filename:
        message = f"could not write {exc.filename}: {exc.strerror}"
    try:
        atomic_write_text(Path(run_dir) / ERROR_FILE, traceback.format_exc())
    except OSError:
        return message
    return f"{message} (traceback in {Path(run_dir) / ERROR_FILE})"


def _worker(job: SeedJob, conn: Any, parent_pid: int) -> None:
    """A worker process: stop handlers first, then its own process group, then training."""
    with StopRequest() as stop:
        os.setpgid(0, 0)  # terminal signals reach only the launcher, which forwards them once
        die_with_parent(parent_pid)
        unblock_stop_signals()  # inherited blocked from the launcher: pending ones arrive now, handled

        def emit(event: Event) -> None:
            try:
                conn.send(event)
            except (OSError, ValueError):  # the launcher is gone: progress is best-effort
                pass

        run_one(job, emit, stop)
        conn.close()


def run_seeds(jobs: list[SeedJob], parallel: int, on_event: Callable[[Event], None],
              stop: StopRequest | None = None) -> list[Any]:
    """Run every job, at most ``parallel`` at once; returns one ``TrainResult`` per job, in order.

    ``stop``: the stop request to obey and forward (default: handlers installed for the call).
    """
    from ppo_cli.trainer import TrainResult

    if stop is None:
        with StopRequest() as own:
            return run_seeds(jobs, parallel, on_event, own)
    results: dict[int, Any] = {}
    if parallel <= 1:
        for job in jobs:
            if stop.requested:
                break
            result = run_one(job, on_event, stop)
            results[job.ident] = result
            if result.status == "interrupted":
                break
    else:
        results = _run_parallel(jobs, parallel, on_event, stop)
    return [results.get(job.ident) or TrainResult(job.config.seed, str(job.run_dir), "interrupted",
                                                        message="not started", signal=stop.signum)
            for job in jobs]


@dataclass
class _Worker:
    process: Any
    conn: Any
    job: SeedJob
    result: Any = None
    started: float = field(default_factory=time.time)


def _run_parallel(jobs: list[SeedJob], parallel: int, on_event: Callable[[Event], None],
                  stop: StopRequest) -> dict[int, Any]:
    ctx = mp.get_context("spawn")  # no fork of a process that may hold torch threads
    _start_resource_tracker()
    pending = list(jobs)
    running: dict[int, _Worker] = {}
    results: dict[int, Any] = {}

    interrupts = [0]

    def forward(signum: int) -> None:
        """Pass the signal on; a third Ctrl-C kills workers that have not stopped after two."""
        interrupts[0] += signum == signal.SIGINT
        for worker in list(running.values()):
            try:
                os.kill(worker.process.pid, signal.SIGKILL if interrupts[0] >= 3 else signum)
            except (ProcessLookupError, TypeError):  # ended, or not started yet
                pass

    stop.listeners.append(forward)
    escalate, stop.escalate = stop.escalate, False  # a second Ctrl-C goes to the workers, not here
    try:
        while pending or running:
            while pending and len(running) < parallel and not stop.requested:
                job = pending.pop(0)
                running[job.ident] = _launch(ctx, job)
            ready = mp.connection.wait([w.conn for w in running.values()], timeout=0.2)
            for worker in list(running.values()):
                if worker.conn in ready:
                    _drain(worker, on_event)
                if worker.conn.closed:  # its pipe is at its end: the worker has exited or is exiting
                    worker.process.join()
                    results[worker.job.ident] = worker.result or _died(worker, on_event)
                    del running[worker.job.ident]
            if stop.requested:
                pending.clear()
    finally:
        stop.listeners.remove(forward)
        stop.escalate = escalate
    return results


def _launch(ctx: Any, job: SeedJob) -> _Worker:
    reader, writer = ctx.Pipe(duplex=False)
    process = ctx.Process(target=_worker, args=(job, writer, os.getpid()), name=f"ppo-seed-{job.config.seed}")
    with signals_deferred():  # the worker starts with the stop signals blocked
        process.start()
    writer.close()  # the worker holds the only writing end: the pipe ends when the worker does
    return _Worker(process, reader, job)


def _drain(worker: _Worker, on_event: Callable[[Event], None]) -> None:
    """Hand on every event waiting in the worker's pipe; close the pipe at its end."""
    try:
        while worker.conn.poll():
            event = worker.conn.recv()
            if event[0] == "done":
                worker.result = event[2]
            on_event(event)
    except (EOFError, OSError):
        worker.conn.close()


def _died(worker: _Worker, on_event: Callable[[Event], None]) -> Any:
    """The result of a worker that ended without reporting one (killed, or it ended itself)."""
    from ppo_cli.trainer import TrainResult

    code = worker.process.exitcode
    message = f"worker process died with exit code {code}"
    error = worker.job.run_dir / ERROR_FILE
    try:
        if error.stat().st_mtime >= worker.started - 1:  # written by this worker, not an earlier attempt
            message += f": {error.read_text(encoding='utf-8').strip().splitlines()[-1]}"
    except (OSError, IndexError, UnicodeDecodeError):
        pass
    result = TrainResult(worker.job.config.seed, str(worker.job.run_dir), "failed", message=message)
    on_event(("done", worker.job.ident, result))
    return result


def _start_resource_tracker() -> None:
    """Start multiprocessing's resource tracker now: starting it unblocks SIGINT and SIGTERM in this
    thread, which must not happen while a worker is being started with them blocked."""
    try:
        from multiprocessing import resource_tracker

        resource_tracker.ensure_running()
    except (ImportError, AttributeError, OSError):
        pass
