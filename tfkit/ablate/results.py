"""The ablation results file: one tidy CSV that many runs and processes append to safely.

One row per evaluation of every run, with the run's ids, its whole setting (swept and
fixed config fields), parameter counts and the metrics. The header is fixed when the
file is created; appending rows with another set of columns is refused.

Concurrency: every write takes an exclusive `flock` on `.<file>.lock`, opens the file,
appends whole rows with one `write` (cut back to the old length if it fails), fsyncs and
closes it. Rewrites (dropping the rows of a run about to be re-run) hold the same lock
and replace the file atomically. So neither an interrupted ablation nor several
ablations appending at once can tear or interleave a row.

A row cut off by a crash or a full disk (no final newline, or the wrong number of
cells) is never appended to: it is moved to a side file `<file>.torn-<time>` and cut
away, and every read leaves it out, so its run counts as unfinished and is trained again.

Claims: a run is trained only by the process holding its claim, an exclusive `flock` on
`.<file>.claims/<run_id>`. The kernel releases it when its holders end (a crash
included), so a run is never trained twice at once and a crashed run can be taken over.

`--overwrite` moves the old file aside (`.<file>.replaced-<owner>`) and deletes it only
once the new file holds a row; an ablation that ends before that puts it back as it was.
A file in use is never replaced: every ablation (and every job) writing to it holds a
shared `flock` on `.<file>.users` for as long as it may append, and `--overwrite` needs
that lock exclusively, so it is refused while another ablation still adds rows.

Reading it back, and what its columns are: `tfkit.ablate.table`.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import io
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tfkit.ablate.processes import owner_alive, owner_tag
from tfkit.ablate.table import DONE_STATUSES, Record, format_cell, records
from tfkit.errors import ConfigError, StorageError
from tfkit.io import append_whole, write_atomic


class ResultsWriteError(StorageError):
    """The shared results file could not be written (a full disk, a read-only file system): the ablation stops."""


class RunClaim:
    """The claim on one run: held while its file descriptor is open, in this or a child process."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # other processes that inherited it keep the claim until they end
            self.fd = -1


class ResultsFile:
    """A results CSV with a fixed header; see the module docstring for the safety rules."""

    def __init__(self, path: str | Path, columns: list[str]) -> None:
        self.path = Path(path)
        self.columns = list(columns)
        self.lock_path = self.path.with_name(f".{self.path.name}.lock")
        self.users_path = self.path.with_name(f".{self.path.name}.users")
        self._users_fd = -1  # the shared lock on `users_path` held while this object may append
        self.claims_dir = self.path.with_name(f".{self.path.name}.claims")
        self.set_aside: list[Path] = []  # side files holding cut-off rows, made by this object
        self.restored: Path | None = None  # an old file put back from an ablation that ended early
        self._replaced: Path | None = None  # the file --overwrite moved aside, until a row arrives
        self._header_size = 0
        # ((device, inode), bytes read, their last bytes): where `_read_statuses` goes on from
        self._seen: tuple[tuple[int, int], int, bytes] | None = None
        self._statuses: dict[str, str] = {}
        self._row_counts: dict[str, int] = {}

    @classmethod
    def open(cls, path: str | Path, columns: list[str], *, append: bool, overwrite: bool) -> ResultsFile:
        """Create the file, or check it for appending; never touches an existing file unasked.

        With `overwrite`, an existing file is moved aside (see `finish`). When appending, a
        cut-off last row is set aside (its side file is in `set_aside`).

        Raises ConfigError (nothing written) when the file exists and neither `append` nor
        `overwrite` is set, or when appending to a file whose header differs.
        """
        results = cls.check(path, columns, append=append, overwrite=overwrite)
        results.path.parent.mkdir(parents=True, exist_ok=True)
        results.use(replace=overwrite)
        try:
            results._open(append=append, overwrite=overwrite)
        except BaseException:
            results.leave()
            raise
        if overwrite:  # replaced: other ablations may append to the new file
            fcntl.flock(results._users_fd, fcntl.LOCK_SH)
        return results

    def _open(self, *, append: bool, overwrite: bool) -> None:
        results = self
        with results._locked():
            results._restore_abandoned()
            if overwrite and results.path.exists():
                results._replaced = results.path.with_name(f".{results.path.name}.replaced-{owner_tag()}")
                os.replace(results.path, results._replaced)
            if overwrite or not results.exists():
                try:
                    results._rewrite(results._header_bytes())
                except BaseException:
                    if results._replaced is not None:
                        os.replace(results._replaced, results.path)
                    raise
                results._header_size = len(results._header_bytes())
            else:
                results._check_header()  # again: another ablation may have created it meanwhile
                results._set_aside_torn()

    def use(self, *, replace: bool = False) -> None:
        """Hold the file for appending until `leave` (or the process ends): a shared lock on `users_path`.

        With `replace` (`--overwrite`), the lock is first taken exclusively: ConfigError when
        another ablation or job holds the file, so its rows are never lost. Once replaced,
        the lock is shared again, so other ablations may append to the new file.
        """
        if self._users_fd >= 0:
            return
        fd = os.open(self.users_path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            if replace:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    raise ConfigError(_in_use(self.path)) from None
            else:
                fcntl.flock(fd, fcntl.LOCK_SH)  # waits only while an --overwrite replaces the file
        except BaseException:
            os.close(fd)
            raise
        self._users_fd = fd

    def leave(self) -> None:
        """Release the hold `use` took (the file may be replaced again)."""
        if self._users_fd >= 0:
            os.close(self._users_fd)
            self._users_fd = -1

    def in_use(self) -> bool:
        """Whether another process holds the file for appending now (without taking anything)."""
        if not self.users_path.is_file():
            return False
        fd = os.open(self.users_path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False

    @classmethod
    def check(cls, path: str | Path, columns: list[str], *, append: bool, overwrite: bool) -> ResultsFile:
        """The checks of `open` without writing anything (for --dry-run and before asking)."""
        results = cls(path, columns)
        if append and overwrite:
            raise ConfigError("--append and --overwrite exclude each other")
        if results.path.is_dir():
            raise ConfigError(f"--logfile {results.path} is a directory")
        if overwrite and results.exists() and results.in_use():
            raise ConfigError(_in_use(results.path))
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

    def _header_bytes(self) -> bytes:
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerow(self.columns)
        return buffer.getvalue().encode()

    def _header(self) -> list[str]:
        try:
            with open(self.path, newline="", encoding="utf-8") as f:
                return next(csv.reader(f), [])
        except (UnicodeDecodeError, csv.Error):  # binary data, or a first "line" of megabytes
            raise ConfigError(
                f"cannot append to {self.path}: it is not a results file (no CSV header); use another --logfile"
            ) from None

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
            f"cannot append to {self.path}: its columns differ ({'; '.join(detail)}); use another --logfile"
        )

    def _rewrite(self, data: bytes) -> None:
        """Replace the file with `data` atomically (a temp file renamed over it)."""

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())

        write_atomic(self.path, write)

    def _is_bad(self, record: Record) -> bool:
        return not record.whole or len(record.cells) != len(self.columns)

    def _set_aside_torn(self) -> Path | None:
        """Move cut-off rows into a side file (under the lock); returns it, or None if all is well."""
        data = self.path.read_bytes()
        found = list(records(data))
        bad = [r for r in found[1:] if self._is_bad(r)]
        if not bad:
            return None
        stamp = time.strftime("%Y%m%dT%H%M%S")
        side = self.path.with_name(f"{self.path.name}.torn-{stamp}")
        n = 1
        while side.exists():
            n += 1
            side = self.path.with_name(f"{self.path.name}.torn-{stamp}-{n}")
        write_atomic(side, lambda tmp: tmp.write_bytes(b"".join(data[r.start : r.end] for r in bad)))
        if len(bad) == 1 and bad[0].end == len(data):  # the usual case: only the last row is cut off
            os.truncate(self.path, bad[0].start)
        else:
            self._rewrite(b"".join(data[r.start : r.end] for r in found if r is found[0] or not self._is_bad(r)))
        self.set_aside.append(side)
        return side

    def append(self, rows: list[dict[str, Any]]) -> None:
        """Append whole rows under the lock, in one write, flushed to disk (or nothing, on failure)."""
        unknown = {k for row in rows for k in row} - set(self.columns)
        if unknown:
            raise ValueError(f"{self.path.name}: columns {sorted(unknown)} are not in the header")
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        for row in rows:
            writer.writerow([format_cell(row.get(c)) for c in self.columns])
        with self._locked():
            with open(self.path, "rb") as f:
                f.seek(0, os.SEEK_END)
                if f.tell() > 0:
                    f.seek(-1, os.SEEK_END)
                    if f.read(1) != b"\n":  # a cut-off row from a crash: never append to it
                        self._set_aside_torn()
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
            try:
                append_whole(fd, buffer.getvalue().encode(), self.path)
            finally:
                os.close(fd)

    def read(self) -> list[dict[str, str]]:
        """All whole rows as strings (empty cells are empty strings); cut-off rows are left out."""
        with self._locked():
            data = self.path.read_bytes()
        rows = [r for r in records(data)][1:]
        return [dict(zip(self.columns, r.cells, strict=True)) for r in rows if not self._is_bad(r)]

    def run_statuses(self) -> dict[str, str]:
        """run_id -> status of its last row (empty when the file does not exist yet)."""
        if not self.exists():
            return {}
        with self._locked():
            return dict(self._read_statuses())

    def _read_statuses(self) -> dict[str, str]:
        """run_id -> last status, reading only what was appended since the last call (under the lock)."""
        stat = os.stat(self.path)
        key = (stat.st_dev, stat.st_ino)
        start, check = 0, b""
        if self._seen is not None and self._seen[0] == key and stat.st_size >= self._seen[1]:
            start, check = self._seen[1], self._seen[2]
        with open(self.path, "rb") as f:
            f.seek(start - len(check))
            data = f.read()
        if not data.startswith(check):  # rewritten in place since: read it all again
            start, check = 0, b""
            with open(self.path, "rb") as f:
                data = f.read()
        data = data[len(check) :]
        found = list(records(data, start))
        if start == 0:
            self._statuses, self._row_counts = {}, {}
            found = found[1:]  # the header
        end = start if start or not found else found[0].start
        run_id, status = self.columns.index("run_id"), self.columns.index("run_status")
        for record in found:
            if not record.whole:
                break  # a cut-off row: it is set aside before anything is appended
            end = record.end
            if len(record.cells) == len(self.columns):
                self._statuses[record.cells[run_id]] = record.cells[status]
                self._row_counts[record.cells[run_id]] = self._row_counts.get(record.cells[run_id], 0) + 1
        tail = data[max(0, end - start - 32) : end - start] if end > start else check
        self._seen = (key, end, tail)
        return self._statuses

    def row_counts(self) -> dict[str, int]:
        """run_id -> number of whole rows in the file."""
        self.run_statuses()
        return dict(self._row_counts)

    def _drop_locked(self, run_ids: set[str]) -> int:
        data = self.path.read_bytes()
        found = list(records(data))
        index = self.columns.index("run_id")
        drop = [r for r in found[1:] if not self._is_bad(r) and r.cells[index] in run_ids]
        if drop:
            dropped = {id(r) for r in drop}
            self._rewrite(b"".join(data[r.start : r.end] for r in found if id(r) not in dropped))
        return len(drop)

    def claim(self, run_id: str) -> RunClaim | None:
        """Claim `run_id` for this process without waiting; None when a live process holds it.

        The claim passes to a child process that inherits its file descriptor, and ends
        when the last process holding it ends.
        """
        self.claims_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.claims_dir / run_id, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        return RunClaim(fd)

    def claimed_elsewhere(self, run_ids: set[str]) -> set[str]:
        """The runs of `run_ids` whose claim another live process holds now."""
        busy = set()
        for run_id in run_ids:
            if not (self.claims_dir / run_id).exists():
                continue
            claim = self.claim(run_id)
            if claim is None:
                busy.add(run_id)
            else:
                claim.release()
        return busy

    def prepare_run(self, run_id: str) -> bool:
        """For a claimed run about to be trained: False if it is already done, else drop its old rows.

        Another ablation may have finished the run since this one read the file.
        """
        with self._locked():
            if not self.exists():
                return True
            status = self._read_statuses().get(run_id)
            if status in DONE_STATUSES:
                return False
            if status is not None:
                self._drop_locked({run_id})
        return True

    def settle(self) -> None:
        """Delete the file `--overwrite` moved aside once the new file holds a row."""
        if self._replaced is not None and self.path.is_file() and self.path.stat().st_size > self._header_size:
            self._replaced.unlink(missing_ok=True)
            self._replaced = None

    def finish(self) -> bool:
        """End of the ablation: put the file `--overwrite` moved aside back if no row came; True if so.

        The hold on the file (`use`) ends here.
        """
        try:
            self.settle()
            if self._replaced is None:
                return False
            with self._locked():
                os.replace(self._replaced, self.path)
            self.restored, self._replaced = self.path, None
            return True
        finally:
            self.leave()

    def _restore_abandoned(self) -> None:
        """Put back a file an `--overwrite` moved aside before its process died with no row written."""
        prefix = f".{self.path.name}.replaced-"
        leftovers = sorted(self.path.parent.glob(prefix + "*"), key=lambda p: p.stat().st_mtime, reverse=True)
        for old in leftovers:
            if owner_alive(old.name[len(prefix) :]):
                continue
            if self._has_rows():
                old.unlink(missing_ok=True)
            else:
                os.replace(old, self.path)
                self.restored = self.path

    def _has_rows(self) -> bool:
        """Whether the file holds anything after its header line."""
        try:
            with open(self.path, "rb") as f:
                f.readline()
                return f.read(1) != b""
        except FileNotFoundError:
            return False


def _in_use(path: Path) -> str:
    return (
        f"{path} is in use: another ablation is still adding rows to it; wait for it to end, or pass another --logfile"
    )


def _names(columns: list[str], most: int = 6) -> str:
    shown = ", ".join(columns[:most])
    return shown + (f" and {len(columns) - most} more" if len(columns) > most else "")
