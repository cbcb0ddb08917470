"""CSV logs of a run: `train_log.csv` and `val_log.csv`, one flushed row per logged point."""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path
from typing import Any, TextIO


class CsvLog:
    """One CSV file whose columns are fixed by the first row; each row is flushed to disk.

    Rows are appended as they come, so a run that dies keeps every row logged before it.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.columns: list[str] | None = None
        self._file: TextIO | None = None
        self._writer: csv.DictWriter | None = None

    def write(self, row: dict[str, Any]) -> None:
        if self._writer is None:
            self.columns = list(row)
            self._file = open(self.path, "w", newline="")
            self._writer = csv.DictWriter(self._file, fieldnames=self.columns)
            self._writer.writeheader()
        unknown = set(row) - set(self.columns or ())
        if unknown:
            raise ValueError(f"{self.path.name}: columns {sorted(unknown)} were not in the first row")
        self._writer.writerow({k: _format(v) for k, v in row.items()})
        assert self._file is not None
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


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

    def log_train(self, row: dict[str, Any]) -> None:
        self.train.write(row)

    def log_val(self, row: dict[str, Any]) -> None:
        self.val.write(row)

    def log_summary(self, summary: dict[str, Any]) -> None:
        pass  # summary.json is written by the trainer itself (atomically)

    def close(self) -> None:
        self.train.close()
        self.val.close()
