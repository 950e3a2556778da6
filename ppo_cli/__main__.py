"""``python -m ppo_cli`` and the ``ppo`` console script.

``python -m`` puts the current folder first on the import path, where the ``ppo`` console script
does not; it is removed (as ``python -m pip`` does), so that a ``.py`` file lying in the folder
you run from (beside a checkpoint you were sent, say) is never imported in place of a package.
Your own environment modules are found on ``PYTHONPATH`` or installed, as with ``ppo``.
"""

import os
import signal
import sys


def _exit_by(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def run() -> None:
    """Import the CLI and run it. A Ctrl-C, SIGTERM or SIGHUP while it loads (torch takes a second or
    more) exits with 130, 143 or 129, without a traceback: before this, a ``kill`` in that second ended
    the process by the signal itself. Commands that train install their own handlers over these."""
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _exit_by)
    try:
        from ppo_cli.cli import main
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    main()


if __name__ == "__main__":
    if sys.path and sys.path[0] in ("", os.getcwd()):
        sys.path.pop(0)
    run()
