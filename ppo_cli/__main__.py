"""``python -m ppo_cli`` and the ``ppo`` console script.

``python -m`` puts the current folder first on the import path, where the ``ppo`` console script
does not; it is removed (as ``python -m pip`` does), so that a ``.py`` file lying in the folder
you run from (beside a checkpoint you were sent, say) is never imported in place of a package.
Your own environment modules are found on ``PYTHONPATH`` or installed, as with ``ppo``.

Signals, from the first line of :func:`run` to the process's end: a SIGTERM, SIGHUP or Ctrl-C
exits with 143, 129 or 130 and no traceback. Commands that train install their own handlers (a
first signal is a request to stop cleanly) for as long as they run. Once the command has
returned, a signal exits at once (the work is done and written). After the last ``atexit``
callback the process exits with the command's code, without the interpreter's teardown: there
(about 0.3 s, with torch loaded) CPython drops a signal or is killed by it.
"""

import atexit
import os
import signal
import sys

LATE_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_exit_code = [0]  # the command's, for _exit_after_teardown


def _exit_by(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):  # a closed or broken pipe: nothing more can be said
            pass


def _exit_now(signum: int, frame: object) -> None:
    _flush()
    os._exit(128 + signum)


def _exit_after_teardown() -> None:
    """The last ``atexit`` callback (registered first)."""
    _flush()
    os._exit(_exit_code[0])


def _code_of(exc: BaseException) -> int:
    """The exit status CPython gives for ``exc`` leaving the program."""
    if isinstance(exc, SystemExit):
        return 0 if exc.code is None else exc.code if isinstance(exc.code, int) else 1
    return 130 if isinstance(exc, KeyboardInterrupt) else 1


def run() -> None:
    """Import the CLI and run it (see the module's docstring for what signals do)."""
    atexit.register(_exit_after_teardown)
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _exit_by)
    try:
        try:
            from ppo_cli.cli import main
        except KeyboardInterrupt:
            raise SystemExit(130) from None
        main()
    except BaseException as exc:
        _exit_code[0] = _code_of(exc)
        raise
    finally:
        for signum in LATE_SIGNALS:
            signal.signal(signum, _exit_now)


if __name__ == "__main__":
    if sys.path and sys.path[0] in ("", os.getcwd()):
        sys.path.pop(0)
    run()
