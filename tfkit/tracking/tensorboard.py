"""TensorBoard logging (`--tensorboard`): event files in `<run>/tensorboard/`, with the CSV column names as tags.

Every numeric cell of a train or val row becomes one scalar: its tag is the column name
(`train_loss`, `val_loss`, `val_loss_3`, ...: the names of train_log.csv, val_log.csv
and wandb), its global step the row's `step`. Cells that are not numbers (text, empty)
are not scalars and are left out, and so is `step` itself, the x axis.

One point per tag and step: a val row shares its position columns (`tokens_seen`,
`epoch`, `time_s`, ...) with the train row of the same step, so where a train row at
that step already wrote a column, the val row's copy is left out (`time_s` differs
between the two: the train row's is kept, as it was written first).

A resumed run (and a spike rollback) calls `continue_after(step)`: the event files are
rewritten without the points past `step`, and the new file starts with TensorBoard's
purge marker at `step + 1` (its START marker makes a TensorBoard already showing the run
drop the stale points too). Both are needed: TensorBoard's Python loader
(`--load_fast=false`) ignores the marker, and a viewer that loaded the old points keeps
them without it.

The records are written here rather than by TensorBoard's `SummaryWriter`, whose writer
thread meets a full disk or a read-only folder on its own: it prints that thread's
traceback, hands the run an error without the file's name, and may leave half a record.
Here each row's points are on disk when `log_train` / `log_val` returns, appended as the
CSV rows are (`tfkit.io.append_whole`: one write, then `fsync`; a failed one is cut
back), so a file-system error is raised in the trainer naming the event file, and every
point written before it stays whole and readable.

`tensorboard` is imported only here.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import numbers
import os
import socket
import time
from pathlib import Path
from typing import Any

from tfkit.errors import ConfigError
from tfkit.io import append_whole

FILE_VERSION = "brain.Event:2"  # the first record of every event file
_file_ids = itertools.count()  # two files of one process in the same second (a rollback) get two names


class TensorBoardTracker:
    """Writes the run's train and val rows, and its summary as text, to `<run>/tensorboard/`."""

    def __init__(self, run_dir: str | Path) -> None:
        try:
            from torch.utils.tensorboard import summary
        except ImportError as e:
            raise ConfigError(f"--tensorboard needs the tensorboard package: pip install tensorboard ({e})") from None
        from tensorboard.compat.proto.event_pb2 import Event, SessionLog
        from tensorboard.compat.proto.summary_pb2 import Summary

        self._text_summary = summary.text
        self._event, self._session_log, self._summary = Event, SessionLog, Summary
        self.log_dir = Path(run_dir) / "tensorboard"
        self._file: tuple[int, Path] | None = None  # the open event file (fd, path), made at the first point
        self._purge_step: int | None = None
        self._last_step: dict[str, int] = {}  # tag -> step of its latest point

    def continue_after(self, step: int) -> None:
        """Keep the points up to `step` (a resumed run logs the later steps again) and write after them."""
        self.close()
        keep_up_to(self.log_dir, step)
        self._purge_step = step + 1
        self._last_step = {}

    def log_train(self, row: dict[str, Any]) -> None:
        self._add_row(row)

    def log_val(self, row: dict[str, Any]) -> None:
        self._add_row(row)

    def log_summary(self, summary: dict[str, Any]) -> None:
        """The summary (status, wall time, throughput, final metrics) as one text table at the final step."""
        lines = ["| key | value |", "| --- | --- |"]
        lines += [f"| {key} | {value} |" for key, value in summary.items() if value is not None and value != ""]
        text = self._text_summary("summary", "\n".join(lines))
        self._write([self._event(wall_time=time.time(), step=int(summary.get("step", 0)), summary=text)])

    def close(self) -> None:
        """Close the event file (every point is on disk already)."""
        if self._file is not None:
            os.close(self._file[0])
            self._file = None

    def _add_row(self, row: dict[str, Any]) -> None:
        step = int(row["step"])
        now = time.time()
        columns = [c for c, v in row.items() if c != "step" and _is_number(v) and self._last_step.get(c) != step]
        # one event per scalar, as TensorBoard's own writer stores them (float32)
        values = [self._summary.Value(tag=column, simple_value=float(row[column])) for column in columns]
        self._write([self._event(wall_time=now, step=step, summary=self._summary(value=[v])) for v in values])
        self._last_step.update(dict.fromkeys(columns, step))

    def _write(self, events: list[Any]) -> None:
        """Append `events` to the event file (made on the first call), whole or not at all."""
        fd, path = self._file or self._open()
        if events:
            append_whole(fd, _records(events), path)

    def _open(self) -> tuple[int, Path]:
        # the name TensorBoard's writer gives its files: readers order a folder's files by it
        name = f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}.{next(_file_ids)}"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        path = self.log_dir / name
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o666)
        first = [self._event(wall_time=time.time(), file_version=FILE_VERSION)]
        if self._purge_step is not None:
            first += [
                self._event(step=self._purge_step, file_version=FILE_VERSION),
                self._event(step=self._purge_step, session_log=self._session_log(status=self._session_log.START)),
            ]
        try:
            append_whole(fd, _records(first), path)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                path.unlink()  # an empty file: nothing of the run is lost
            raise
        self._file = (fd, path)
        self._purge_step = None
        return self._file


def _records(events: list[Any]) -> bytes:
    """`events` in TensorBoard's record framing (length, checksums), as the bytes of one append."""
    from tensorboard.summary.writer.record_writer import RecordWriter

    buffer = io.BytesIO()
    records = RecordWriter(buffer)
    for event in events:
        records.write(event.SerializeToString())
    return buffer.getvalue()


def _is_number(value: Any) -> bool:
    # a CSV cell that reads back as a number: not text, not empty, not a bool (written True/False)
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def event_files(log_dir: Path) -> list[Path]:
    """The event files of `log_dir` in the order TensorBoard reads them (sorted names with `tfevents`)."""
    if not log_dir.is_dir():
        return []
    return sorted(p for p in log_dir.iterdir() if "tfevents" in p.name and p.is_file())


def keep_up_to(log_dir: Path, step: int) -> None:
    """Rewrite the event files of `log_dir` as one file without the points after `step`.

    The kept records are copied byte for byte, in reading order; the purge markers of
    earlier resumes are dropped (the file no longer holds what they purged), and a torn
    last record (a killed writer) ends its file. The new file is complete on disk before
    it takes the place of the newest old one, and the older ones are removed after it;
    if it cannot be written, the old files are left as they were and the `OSError` names
    `log_dir`.
    """
    files = event_files(log_dir)
    if not files:
        return
    from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.summary.writer.record_writer import RecordWriter

    tmp = log_dir / ".rewrite.tmp"  # no `tfevents` in the name: TensorBoard does not read it
    try:
        with open(tmp, "wb") as f:
            records = RecordWriter(f)
            version_written = False
            for path in files:
                for raw in RawEventFileLoader(str(path)).Load():
                    event = Event.FromString(raw)
                    if event.HasField("file_version"):
                        if version_written:
                            continue
                        version_written = True
                    elif event.HasField("session_log") or event.step > step:
                        continue
                    records.write(raw)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:  # a full disk, a read-only folder: the old files stay as they were
        with contextlib.suppress(OSError):  # on a read-only folder there is none, and unlink says EROFS
            tmp.unlink()
        raise OSError(e.errno, e.strerror, str(log_dir)) from None
    os.replace(tmp, files[-1])
    for path in files[:-1]:
        path.unlink()
