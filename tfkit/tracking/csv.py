"""CSV logs of a run: `train_log.csv` and `val_log.csv`, one whole row on disk per logged point."""

from __future__ import annotations

import csv
import io
import math
import os
from pathlib import Path
from typing import Any

from tfkit.io import append_whole


class CsvLog:
    """One CSV file whose columns are fixed by the first row; each row is on disk when `write` returns.

    Rows are appended as they come, so a run that dies keeps every row logged before it.
    Each row is one `write` of its whole encoded line, then `fsync`; a write that fails
    (a full disk) is cut back, so the file never ends in half a row, and the error raised
    names the file.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.columns: list[str] | None = None
        self._fd: int | None = None

    def continue_after(self, step: int) -> None:
        """Keep the rows up to `step` (a resumed run logs the later steps again) and append after them.

        The file is rewritten atomically without the later rows and without a torn last
        row; with no file yet, the first `write` starts one as usual.
        """
        if not self.path.is_file():
            return
        from tfkit.io import write_atomic

        with open(self.path, newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            rows = [r for r in reader if header is not None and len(r) == len(header) and _step(r[0]) <= step]
        if header is None:
            return
        write_atomic(self.path, lambda tmp: tmp.write_bytes(b"".join(_line(r) for r in [header, *rows])))
        self.columns = header
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)

    def write(self, row: dict[str, Any]) -> None:
        if self._fd is None:
            columns = list(row)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
            self.columns = columns
            append_whole(self._fd, _line(columns), self.path)
        unknown = set(row) - set(self.columns or ())
        if unknown:
            raise ValueError(f"{self.path.name}: columns {sorted(unknown)} were not in the first row")
        append_whole(self._fd, _line([_format(row.get(k, "")) for k in self.columns or ()]), self.path)

    def write_many(self, rows: list[list[Any]]) -> None:
        """Several rows of values in the file's column order, on disk in one write (cut back if it fails)."""
        if self._fd is None or not rows:
            raise ValueError(f"{self.path.name}: write_many appends to a file that has its header")
        append_whole(self._fd, b"".join(_line([_format(v) for v in row]) for row in rows), self.path)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _step(value: str) -> float:
    try:
        return float(value)
    except ValueError:
        return math.inf  # not a row of this log: dropped


def _line(values: list[Any]) -> bytes:
    """One encoded CSV line, written as the `csv` module writes it."""
    buffer = io.StringIO()
    csv.writer(buffer).writerow(values)
    return buffer.getvalue().encode()


def _format(value: Any) -> Any:
    # repr-precision floats keep paired differences (excess_loss ~1e-4) exact in the file;
    # non-finite values are written as polars/pandas read them.
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    return value


class CsvTracker:
    """Writes `train_log.csv` and `val_log.csv` in the run directory."""

    def __init__(self, run_dir: str | Path) -> None:
        run_dir = Path(run_dir)
        self.train = CsvLog(run_dir / "train_log.csv")
        self.val = CsvLog(run_dir / "val_log.csv")

    def continue_after(self, step: int) -> None:
        """Resume both logs after `step` (`CsvLog.continue_after`)."""
        self.train.continue_after(step)
        self.val.continue_after(step)

    def log_train(self, row: dict[str, Any]) -> None:
        self.train.write(row)

    def log_val(self, row: dict[str, Any]) -> None:
        self.val.write(row)

    def log_summary(self, summary: dict[str, Any]) -> None:
        pass  # summary.json is written by the trainer itself (atomically)

    def close(self) -> None:
        self.train.close()
        self.val.close()
