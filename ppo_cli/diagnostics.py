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
    that ``global_step`` (the first column): later rows and a half-written last line are dropped,
    the file is rewritten atomically, and new rows are appended.
    """

    def __init__(self, path: Path, columns: tuple[str, ...], keep_until_step: int | None = None) -> None:
        self.path = Path(path)
        self.columns = columns
        if keep_until_step is None:
            self._file = open(self.path, "w", newline="", encoding="utf-8")  # noqa: SIM115 - closed in close()
            self._writer = csv.writer(self._file, lineterminator="\n")
            self._writer.writerow(columns)
        else:
            _truncate(self.path, columns, keep_until_step)
            self._file = open(self.path, "a", newline="", encoding="utf-8")  # noqa: SIM115
            self._writer = csv.writer(self._file, lineterminator="\n")
        self._file.flush()

    def write(self, row: Mapping[str, Any]) -> None:
        self._writer.writerow([_cell(row.get(c)) for c in self.columns])
        self._file.flush()

    def write_many(self, rows: list[tuple[Any, ...]]) -> None:
        """Rows given as tuples in column order."""
        self._writer.writerows(rows)
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def _truncate(path: Path, columns: tuple[str, ...], max_step: int) -> None:
    """Keep the header and the complete rows with ``global_step <= max_step``; replace the file."""
    header = ",".join(columns) + "\n"
    text = path.read_text(encoding="utf-8") if path.exists() else header
    lines = text.splitlines(keepends=True)
    if not lines or lines[0].replace("\r\n", "\n") != header:
        raise ValueError(f"{path} does not start with the expected header")
    kept = [header]
    for line in lines[1:]:
        if not line.endswith("\n"):
            break  # a row cut off by a hard kill
        step = line.split(",", 1)[0]
        if not step.isdigit() or int(step) > max_step:
            break
        kept.append(line.replace("\r\n", "\n"))
    atomic_write_text(path, "".join(kept))
