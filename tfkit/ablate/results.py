"""The ablation results file: one tidy CSV that many runs and processes append to safely.

One row per evaluation of every run, with the run's ids, its whole setting (swept and
fixed config fields), parameter counts and the metrics. The header is fixed when the
file is created; appending rows with another set of columns is refused.

Concurrency: every write takes an exclusive `flock` on `.<file>.lock`, opens the file,
appends whole rows with one `write`, fsyncs and closes it. Rewrites (dropping the rows of
a run about to be re-run) hold the same lock and replace the file atomically. So neither
an interrupted ablation nor several ablations appending at once can tear or interleave
a row.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import io
import json
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tfkit.errors import ConfigError

ID_COLUMNS = ("run_id", "setting_id", "run_num", "seed", "run_status", "run_dir")

# run_status of a row: `running` for every evaluation but a run's last; the last row
# carries how the run ended. `completed` and `failed` (diverged: a result of the
# setting, the same on every re-run) count as done; `interrupted` and `error` do not.
DONE_STATUSES = ("completed", "failed")


def format_cell(value: Any) -> str:
    """One CSV cell that polars reads back as the right type with no extra parsing."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)  # full precision: paired differences stay exact
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True)
    return str(value)


class ResultsFile:
    """A results CSV with a fixed header; see the module docstring for the safety rules."""

    def __init__(self, path: str | Path, columns: list[str]) -> None:
        self.path = Path(path)
        self.columns = list(columns)
        self.lock_path = self.path.with_name(f".{self.path.name}.lock")

    @classmethod
    def open(cls, path: str | Path, columns: list[str], *, append: bool, overwrite: bool) -> ResultsFile:
        """Create the file, or check it for appending; never touches an existing file unasked.

        Raises ConfigError (nothing written) when the file exists and neither `append` nor
        `overwrite` is set, or when appending to a file whose header differs.
        """
        results = cls.check(path, columns, append=append, overwrite=overwrite)
        results.path.parent.mkdir(parents=True, exist_ok=True)
        with results._locked():
            if overwrite or not results.exists():
                results._replace(header_only=True)
            else:
                results._check_header()  # again: another ablation may have created it meanwhile
        return results

    @classmethod
    def check(cls, path: str | Path, columns: list[str], *, append: bool, overwrite: bool) -> ResultsFile:
        """The checks of `open` without writing anything (for --dry-run and before asking)."""
        results = cls(path, columns)
        if append and overwrite:
            raise ConfigError("--append and --overwrite exclude each other")
        if results.path.is_dir():
            raise ConfigError(f"--logfile {results.path} is a directory")
        if results.exists() and not overwrite:
            if not append:
                raise ConfigError(
                    f"{results.path} already exists; pass --append to add to it (and resume), "
                    "--overwrite to replace it, or another --logfile"
                )
            results._check_header()
        return results

    def exists(self) -> bool:
        return self.path.is_file() and self.path.stat().st_size > 0

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self.lock_path, "a") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)

    def _header(self) -> list[str]:
        with open(self.path, newline="") as f:
            return next(csv.reader(f), [])

    def _check_header(self) -> None:
        existing = self._header()
        if existing == self.columns:
            return
        missing = [c for c in self.columns if c not in existing]
        extra = [c for c in existing if c not in self.columns]
        detail = []
        if missing:
            detail.append(f"this ablation adds {_names(missing)}")
        if extra:
            detail.append(f"the file has {_names(extra)} that this ablation does not")
        if not detail:
            detail.append("the same columns in another order")
        raise ConfigError(
            f"cannot append to {self.path}: its columns differ ({'; '.join(detail)}); "
            "use another --logfile"
        )

    def _replace(self, *, header_only: bool, keep: list[list[str]] | None = None) -> None:
        """Write the header (and `keep` rows) to a temp file and rename it over the file."""
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(self.columns)
        if not header_only and keep:
            writer.writerows(keep)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        with open(tmp, "w", newline="") as f:
            f.write(buffer.getvalue())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def append(self, rows: list[dict[str, Any]]) -> None:
        """Append whole rows under the lock, in one write, flushed to disk."""
        unknown = {k for row in rows for k in row} - set(self.columns)
        if unknown:
            raise ValueError(f"{self.path.name}: columns {sorted(unknown)} are not in the header")
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        for row in rows:
            writer.writerow([format_cell(row.get(c)) for c in self.columns])
        with self._locked(), open(self.path, "a", newline="") as f:
            f.write(buffer.getvalue())
            f.flush()
            os.fsync(f.fileno())

    def read(self) -> list[dict[str, str]]:
        """All rows as strings (empty cells are empty strings)."""
        with self._locked(), open(self.path, newline="") as f:
            return list(csv.DictReader(f))

    def run_statuses(self) -> dict[str, str]:
        """run_id -> status of its last row (empty when the file does not exist yet)."""
        if not self.exists():
            return {}
        return {row["run_id"]: row["run_status"] for row in self.read()}

    def done_run_ids(self) -> set[str]:
        return {run_id for run_id, status in self.run_statuses().items() if status in DONE_STATUSES}

    def drop_runs(self, run_ids: set[str]) -> int:
        """Remove every row of these runs (atomically, under the lock); returns rows removed."""
        if not run_ids:
            return 0
        with self._locked():
            with open(self.path, newline="") as f:
                reader = csv.reader(f)
                header = next(reader)
                rows = list(reader)
            index = header.index("run_id")
            keep = [row for row in rows if row[index] not in run_ids]
            if len(keep) != len(rows):
                self._replace(header_only=False, keep=keep)
        return len(rows) - len(keep)


def _names(columns: list[str], most: int = 6) -> str:
    shown = ", ".join(columns[:most])
    return shown + (f" and {len(columns) - most} more" if len(columns) > most else "")
