"""Stopping cleanly: signals become a request checked at safe points, workers die with their parent,
and a hung environment step is interrupted.

* :class:`StopRequest`: the first SIGINT (Ctrl-C), SIGTERM (``kill``, ``timeout``, Slurm, Docker,
  systemd) or SIGHUP (a closed terminal) only records the signal; the trainer checks it between
  environment steps and before the update, so an iteration is never half written. A *second
  SIGINT* interrupts at once (``KeyboardInterrupt``); repeated SIGTERM or SIGHUP are the same
  request again (supervisors often send SIGTERM to every process of a job, and the launcher
  forwards it too). The exit code of a stopped command is ``128 + signal`` (130, 143, 129).
* :func:`die_with_parent`: a worker process asks the kernel for SIGTERM when its parent dies
  (Linux ``prctl(PR_SET_PDEATHSIG)``; elsewhere a thread watches the parent's PID), so killing
  the parent, even with SIGKILL, never leaves workers writing into the run.
* :class:`StepWatchdog`: with ``--step-timeout``, a thread interrupts the main thread when one
  environment step runs longer than the timeout.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import threading
import time
from typing import Any, Callable, Iterator

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_PR_SET_PDEATHSIG = 1


class StopRequest:
    """Records the first stop signal; ``with StopRequest() as stop:`` installs its handlers
    (in the main thread only; elsewhere it stays a plain flag that :meth:`request` can set).

    ``listeners`` are called with the signal number on every signal (the launcher forwards it to
    its workers). With ``escalate`` off, a second SIGINT is passed to the listeners but does not
    raise here (the launcher keeps waiting for its workers to save).
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self.listeners: list[Callable[[int], None]] = []
        self.escalate = True
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def exit_code(self) -> int:
        """``128 + signal``: what a shell reports for a process ended by that signal."""
        return 128 + (self.signum or signal.SIGINT)

    def request(self, signum: int = signal.SIGINT) -> None:
        """Record a stop request as if ``signum`` had arrived (without raising)."""
        if self.signum is None:
            self.signum = signum

    def _handle(self, signum: int, frame: Any) -> None:
        repeated = self.signum is not None
        self.request(signum)
        for listener in list(self.listeners):
            listener(signum)
        if repeated and signum == signal.SIGINT and self.escalate:
            raise KeyboardInterrupt

    def check(self) -> None:
        """Raise ``KeyboardInterrupt`` if a stop was requested (called at safe points)."""
        if self.signum is not None:
            raise KeyboardInterrupt

    def install(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread() and not self._previous:
            for signum in STOP_SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def uninstall(self) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous.clear()

    def __enter__(self) -> StopRequest:
        return self.install()

    def __exit__(self, *exc: object) -> None:
        self.uninstall()


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Block the stop signals in this thread for the block (delivered when it ends); a process
    started inside inherits them blocked until it unblocks them itself."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def unblock_stop_signals() -> None:
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


def die_with_parent(parent_pid: int, signum: int = signal.SIGTERM) -> None:
    """Have ``signum`` sent to this process when the process ``parent_pid`` (its parent) ends."""
    armed = False
    if sys.platform.startswith("linux"):
        try:
            armed = ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signum), 0, 0, 0) == 0
        except (OSError, AttributeError):
            armed = False
    if not armed:
        def watch() -> None:
            while os.getppid() == parent_pid:
                time.sleep(0.5)
            os.kill(os.getpid(), signum)

        threading.Thread(target=watch, name="ppo-parent-watch", daemon=True).start()
    if os.getppid() != parent_pid:  # the parent died before the request was in place
        os.kill(os.getpid(), signum)


class StepTimeout(RuntimeError):
    """An environment step ran longer than ``--step-timeout``."""


class StepWatchdog:
    """Interrupt the main thread when one call of a wrapped step function outlasts ``timeout`` seconds.

    ``with StepWatchdog(timeout, on_stuck) as watchdog: step = watchdog.wrap(envs.step)``. A
    thread polls the step in progress; past the timeout it sends SIGALRM to the main thread, whose
    handler raises :class:`StepTimeout` out of the step (also out of a blocking system call such
    as ``sleep``). If the step still has not returned ``grace`` seconds later (code that swallows
    the exception, or a C call that retries), ``on_stuck(message)`` is called from the thread;
    it is expected to save what it can and end the process.
    """

    def __init__(self, timeout: float, on_stuck: Callable[[str], None] | None = None,
                 grace: float | None = None) -> None:
        self.timeout = float(timeout)
        self.grace = max(self.timeout, 5.0) if grace is None else grace
        self.on_stuck = on_stuck
        self.started: float | None = None  # time.monotonic() of the step in progress
        self._fired = False
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        self._previous: Any = None

    def wrap(self, step: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any) -> Any:
            self._fired = False
            self.started = time.monotonic()
            try:
                return step(*args)
            finally:
                self.started = None
        return timed

    def message(self) -> str:
        return f"an environment step did not return within --step-timeout {self.timeout:g} s"

    def _alarm(self, signum: int, frame: Any) -> None:
        if self.started is not None and self._fired:
            raise StepTimeout(self.message())

    def _watch(self) -> None:
        main = threading.main_thread().ident
        poll = min(0.05, self.timeout / 10)
        while not self._done.wait(poll):
            started = self.started
            if started is None:
                continue
            late = time.monotonic() - started - self.timeout
            if late > 0 and not self._fired:
                self._fired = True
                signal.pthread_kill(main, signal.SIGALRM)
            elif late > self.grace and self.on_stuck is not None:
                self.on_stuck(f"{self.message()}, and did not stop when interrupted")
                return

    def __enter__(self) -> StepWatchdog:
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("--step-timeout needs training to run in the main thread")
        self._previous = signal.signal(signal.SIGALRM, self._alarm)
        self._thread = threading.Thread(target=self._watch, name="ppo-step-watchdog", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        if self._thread is not None:
            self._thread.join()
        signal.signal(signal.SIGALRM, self._previous)
