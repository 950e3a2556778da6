"""``python -m ppo_cli`` and the ``ppo`` console script.

``python -m`` puts the current folder first on the import path, where the ``ppo`` console script
does not; it is removed (as ``python -m pip`` does), so that a ``.py`` file lying in the folder
you run from (beside a checkpoint you were sent, say) is never imported in place of a package.
Your own environment modules are found on ``PYTHONPATH`` or installed, as with ``ppo``.
"""

import os
import sys


def run() -> None:
    """Import the CLI and run it; a Ctrl-C while it loads exits with 130, without a traceback."""
    try:
        from ppo_cli.cli import main
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    main()


if __name__ == "__main__":
    if sys.path and sys.path[0] in ("", os.getcwd()):
        sys.path.pop(0)
    run()
