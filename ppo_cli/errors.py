"""The one error a library call raises for something the user can fix; the CLI prints it once.

``param`` names the command-line parameter at fault (``"ENV"``, ``"--run-name"``, ...), or is None
when several are; ``usage`` tells a mistake in the options (exit code 2 with the usage line) from a
state of the machine the user must change (a busy run, a read-only disk: one ``Error:`` line).
"""

from __future__ import annotations


class UserError(ValueError):
    def __init__(self, message: str, param: str | None = None, usage: bool = True) -> None:
        super().__init__(message)
        self.param = param
        self.usage = usage
