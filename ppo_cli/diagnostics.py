"""CSV diagnostics: columns fixed when the file is opened, one row per call, flushed at once."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any, Mapping

from ppo_cli.files import atomic_write_text

PROGRESS_COLUMNS = (
    "global_step", "iteration", "time_s", "sps", "episodic_return", "episodic_length", "episodes",
    "policy_loss", "value_loss", "entropy", "action_std", "approx_kl", "clipfrac",
    "explained_variance", "learning_rate", "update_fraction",
)
"""``progress.csv``: one row per iteration. ``episodic_return``/``episodic_length`` are the raw
(unnormalised) means over episodes that ended in the iteration, empty when none did."""

TIMING_COLUMNS = ("time_s", "sps")
"""Columns that differ between otherwise identical runs."""

EPISODE_COLUMNS = ("global_step", "return", "length")
"""``episodes.csv``: one row per finished episode (raw return)."""


def _cell(value: Any) -> Any:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return value


class CsvLog:
    """Append rows to a CSV file with a fixed header; every row reaches the disk before returning.

    A new log starts the file. With ``keep_until_step`` (resuming), the existing file is kept up to
    that ``global_step`` (the first column): every valid row at or before it stays, in order;
    rows after it, a half-written last line and damaged lines are dropped (``dropped`` counts the
    damaged ones, so the caller can say so); the file is rewritten atomically and new rows are
    appended.
    """

    def __init__(self, path: Path, columns: tuple[str, ...], keep_until_step: int | None = None) -> None:
        self.path = Path(path)
        self.columns = columns
        self.dropped: list[int] = []  # line numbers (1-based) of damaged lines dropped on resume
        if keep_until_step is None:
            self._file = open(self.path, "w", newline="", encoding="utf-8")  # noqa: SIM115 - closed in close()
            self._writer = csv.writer(self._file, lineterminator="\n")
            self._writer.writerow(columns)
        else:
            self.dropped = _truncate(self.path, columns, keep_until_step)
            self._file = open(self.path, "a", newline="", encoding="utf-8")  # noqa: SIM115
            self._writer = csv.writer(self._file, lineterminator="\n")
        self._file.flush()

    def write(self, row: Mapping[str, Any]) -> None:
        try:
            self._writer.writerow([_cell(row.get(c)) for c in self.columns])
            self._file.flush()
        except OSError as exc:  # name the file: a full disk says only "No space left on device"
            raise OSError(exc.errno, exc.strerror, str(self.path)) from None

    def write_many(self, rows: list[tuple[Any, ...]]) -> None:
        """Rows given as tuples in column order."""
        try:
            self._writer.writerows(rows)
            self._file.flush()
        except OSError as exc:
            raise OSError(exc.errno, exc.strerror, str(self.path)) from None

    def close(self) -> None:
        self._file.close()


def _number(cell: str) -> bool:
    if cell == "":
        return True
    try:
        float(cell)
    except ValueError:
        return False
    return True


def valid_row(line: str, width: int) -> bool:
    """Whether ``line`` (with its line end) is a complete row of ``width`` numeric-or-empty cells
    whose first cell, the ``global_step``, is a non-negative integer."""
    if not line.endswith("\n") or "\x00" in line:
        return False
    cells = next(csv.reader([line.rstrip("\r\n")]), [])
    return len(cells) == width and cells[0].isdigit() and all(_number(c) for c in cells[1:])


def _truncate(path: Path, columns: tuple[str, ...], max_step: int) -> list[int]:
    """Keep the header and every valid row with ``global_step <= max_step``; replace the file.

    Returns the line numbers of the damaged lines dropped. An unfinished last line (no line end:
    the row being written when the process was killed) is not counted: the resume writes it again.
    """
    header = ",".join(columns) + "\n"
    try:
        text = path.read_bytes().decode("utf-8", errors="replace")
    except FileNotFoundError:
        text = header
    lines = [line + "\n" for line in text.split("\n")]
    lines.pop()  # what follows the last line end: nothing, or an unfinished row (dropped, not counted)
    kept, dropped = [header], []
    for number, line in enumerate(lines, start=1):
        if number == 1 and line.replace("\r\n", "\n") == header:
            continue
        if valid_row(line, len(columns)):
            if int(line.split(",", 1)[0]) <= max_step:
                kept.append(line.replace("\r\n", "\n"))
        else:
            dropped.append(number)
    atomic_write_text(path, "".join(kept))
    return dropped
