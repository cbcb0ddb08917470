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
rewritten without the points past `step`, and the new writer starts with TensorBoard's
`purge_step` (its START marker makes a TensorBoard already showing the run drop the
stale points too). Both are needed: TensorBoard's Python loader (`--load_fast=false`)
ignores the marker, and a viewer that loaded the old points keeps them without it.

`tensorboard` is imported only here.
"""

from __future__ import annotations

import numbers
import os
from pathlib import Path
from typing import Any

from tfkit.errors import ConfigError

# how often the writer's thread puts pending points on disk (and at close): a viewer lags by at most this
FLUSH_SECS = 5


class TensorBoardTracker:
    """Writes the run's train and val rows, and its summary as text, to `<run>/tensorboard/`."""

    def __init__(self, run_dir: str | Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:
            raise ConfigError(f"--tensorboard needs the tensorboard package: pip install tensorboard ({e})") from None
        self._summary_writer = SummaryWriter
        self.log_dir = Path(run_dir) / "tensorboard"
        self._writer: Any = None  # made at the first point, so that `continue_after` can set its purge step
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
        self._get_writer().add_text("summary", "\n".join(lines), global_step=int(summary.get("step", 0)))

    def close(self) -> None:
        """Flush every pending point to disk and close the event file."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def _add_row(self, row: dict[str, Any]) -> None:
        step = int(row["step"])
        writer = self._get_writer()
        for column, value in row.items():
            if column == "step" or not _is_number(value) or self._last_step.get(column) == step:
                continue
            writer.add_scalar(column, float(value), global_step=step)
            self._last_step[column] = step

    def _get_writer(self) -> Any:
        if self._writer is None:
            self._writer = self._summary_writer(str(self.log_dir), purge_step=self._purge_step, flush_secs=FLUSH_SECS)
            self._purge_step = None
        return self._writer


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
    it takes the place of the newest old one, and the older ones are removed after it.
    """
    files = event_files(log_dir)
    if not files:
        return
    from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.summary.writer.record_writer import RecordWriter

    tmp = log_dir / ".rewrite.tmp"  # no `tfevents` in the name: TensorBoard does not read it
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
    os.replace(tmp, files[-1])
    for path in files[:-1]:
        path.unlink()
