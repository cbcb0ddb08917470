"""CSV logs of a run: `train_log.csv` and `val_log.csv`, one whole row on disk per logged point.

A resumed run keeps each log's rows up to its checkpoint (`continue_log`). Bytes that are
not whole rows of the log (a crash's torn or NUL-filled tail, anything else written into
it) are never appended to: a NUL-filled tail holds nothing and is dropped; other damage is
moved to a side file `<file>.torn-<time>` and named in a note, and the log goes on from its
good rows. A log whose header is damaged is refused (`DataError`, nothing changed): which
of its rows are good cannot be told.
"""

from __future__ import annotations

import csv
import io
import math
import os
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tfkit.errors import DataError
from tfkit.io import append_whole, write_atomic

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def continue_log(path: Path, step: int, columns: Sequence[str] | None = None) -> tuple[list[str] | None, Path | None]:
    """Cut the CSV log `path` back to its whole rows up to `step`, atomically; set any damage aside.

    A row is whole when it is UTF-8, ends in a newline, has the header's number of cells
    and a number for its step (the first cell). Rows past `step` go (a resumed run logs
    them again); empty lines and NUL bytes go; anything else that is not a whole row is
    moved to `<file>.torn-<time>` first, and the log keeps every whole row around it.

    Args:
        columns: the header the log must have (None: any header of unique column names
            starting with `step`).

    Returns (the header, None when there is no file or nothing but NULs in it; the side
    file, None when nothing was set aside). Raises `DataError` naming the file, which is
    left as it was, when its first line is not such a header.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None, None
    lines = data.splitlines(keepends=True)
    header = _checked_header(path, lines, columns)
    if header is None:
        return None, None
    kept, damaged = [lines[0]], []
    for line in lines[1:]:
        if not _has_content(line):
            continue
        row_step = _row_step(line, len(header))
        if row_step is None:
            damaged.append(line)
        elif row_step <= step:
            kept.append(line)
    side = _set_aside(path, b"".join(damaged)) if damaged else None
    write_atomic(path, lambda tmp: _write_synced(tmp, b"".join(kept)))
    return header, side


def check_log(path: Path, columns: Sequence[str] | None = None) -> None:
    """Raise the `DataError` `continue_log` would for `path` (its header damaged); change nothing."""
    try:
        lines = path.read_bytes().splitlines(keepends=True)
    except FileNotFoundError:
        return
    _checked_header(path, lines, columns)


def _checked_header(path: Path, lines: list[bytes], columns: Sequence[str] | None) -> list[str] | None:
    """The header of a log of `lines`: None when it holds nothing but NULs; `DataError` when it is damaged."""
    if not lines or not _has_content(lines[0]):
        if any(_has_content(line) for line in lines):
            raise _bad_header(path, lines[0] if lines else b"")
        return None
    header = _header(lines[0], columns)
    if header is None:
        raise _bad_header(path, lines[0])
    return header


def _has_content(line: bytes) -> bool:
    """Anything but NUL bytes and line ends (what a crash leaves where data never reached the disk)."""
    return bool(line.strip(b"\0\r\n"))


def _header(line: bytes, columns: Sequence[str] | None) -> list[str] | None:
    """The column names of a header line, or None when it is not a header this log may have."""
    cells = _cells(line)
    if cells is None or not line.endswith(b"\n"):
        return None
    if columns is not None:
        return cells if cells == list(columns) else None
    names_ok = all(_NAME.fullmatch(name) for name in cells) and len(set(cells)) == len(cells)
    return cells if names_ok and cells[:1] == ["step"] else None


def _row_step(line: bytes, width: int) -> float | None:
    """The step of a whole row of `width` cells, or None when `line` is not one."""
    cells = _cells(line)
    if cells is None or len(cells) != width or not line.endswith(b"\n"):
        return None
    try:
        value = float(cells[0])
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _cells(line: bytes) -> list[str] | None:
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if "\0" in text:
        return None
    try:
        rows = list(csv.reader(io.StringIO(text)))
    except csv.Error:
        return None
    return rows[0] if len(rows) == 1 else None


def _bad_header(path: Path, line: bytes) -> DataError:
    shown = line[:80].decode("utf-8", errors="replace").strip()
    return DataError(
        f"{path}: its first line is not the header of this log ({shown!r}); restore it, "
        "or move the file away to resume without its rows"
    )


def _set_aside(path: Path, data: bytes) -> Path:
    """Write `data` to a new `<path>.torn-<time>` beside `path` (atomically); returns it."""
    stamp = time.strftime("%Y%m%dT%H%M%S")
    side = path.with_name(f"{path.name}.torn-{stamp}")
    n = 1
    while side.exists():
        n += 1
        side = path.with_name(f"{path.name}.torn-{stamp}-{n}")
    write_atomic(side, lambda tmp: _write_synced(tmp, data))
    return side


def set_aside_note(path: Path, side: Path) -> str:
    """The line that tells a user what `continue_log` moved where."""
    size = side.stat().st_size
    return f"{path} held {size:,} bytes that are not whole rows of it; they were moved to {side.name}"


def _write_synced(tmp: Path, data: bytes) -> None:
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


class CsvLog:
    """One CSV file whose columns are fixed by the first row; each row is on disk when `write` returns.

    Rows are appended as they come, so a run that dies keeps every row logged before it.
    Each row is one `write` of its whole encoded line, then `fsync`; a write that fails
    (a full disk) is cut back, so the file never ends in half a row, and the error raised
    names the file.
    """

    def __init__(self, path: str | Path, columns: Sequence[str] | None = None) -> None:
        self.path = Path(path)
        self.expected = columns  # the header it must have, when known (checked when a run continues it)
        self.columns: list[str] | None = None
        self.continued = False  # the header came from the file of an earlier session
        self._fd: int | None = None

    def continue_after(self, step: int) -> Path | None:
        """Keep the whole rows up to `step` (a resumed run logs the later steps again) and append after them.

        The file is cut back atomically (`continue_log`); returns the side file damaged bytes
        were moved to, if any. With no file yet, the first `write` starts one as usual.
        """
        self.close()
        header, side = continue_log(self.path, step, self.expected)
        if header is None:  # no file, or NUL bytes only (a crash before its header reached the disk)
            self.path.unlink(missing_ok=True)
        else:
            self.columns = header
            self.continued = True
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        return side

    def check_continuable(self) -> None:
        """Raise the `DataError` `continue_after` would for a damaged header, changing nothing."""
        check_log(self.path, self.expected)

    def write(self, row: dict[str, Any]) -> None:
        if self._fd is None:
            columns = list(row)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
            self.columns = columns
            append_whole(self._fd, _line(columns), self.path)
        unknown = set(row) - set(self.columns or ())
        if unknown and self.continued:
            raise DataError(
                f"{self.path}: its header lacks the columns {sorted(unknown)[:3]} this run logs, so it is not "
                "this run's log; move it away to resume without its rows"
            )
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

    def check_continuable(self) -> None:
        """Refuse (`DataError`) before either log changes when one cannot be continued."""
        self.train.check_continuable()
        self.val.check_continuable()

    def continue_after(self, step: int) -> list[str]:
        """Resume both logs after `step` (`CsvLog.continue_after`); one note for each side file of damage."""
        notes = []
        for log in (self.train, self.val):
            side = log.continue_after(step)
            if side is not None:
                notes.append(set_aside_note(log.path, side))
        return notes

    def log_train(self, row: dict[str, Any]) -> None:
        self.train.write(row)

    def log_val(self, row: dict[str, Any]) -> None:
        self.val.write(row)

    def log_summary(self, summary: dict[str, Any]) -> None:
        pass  # summary.json is written by the trainer itself (atomically)

    def close(self) -> None:
        self.train.close()
        self.val.close()
