"""CSV diagnostics: columns fixed when the file is opened, one row per call, flushed at once."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any, Mapping

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
    """Append rows to a CSV file with a fixed header; every row reaches the disk before returning."""

    def __init__(self, path: Path, columns: tuple[str, ...]) -> None:
        self.path = Path(path)
        self.columns = columns
        self._file = open(self.path, "w", newline="", encoding="utf-8")  # noqa: SIM115 - closed in close()
        self._writer = csv.writer(self._file)
        self._writer.writerow(columns)
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
