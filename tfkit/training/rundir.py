"""A run directory owned by one process: its lock, replacing an old run, room for the summary.

- `prepare_run_dir` creates the directory and takes its `RunDirLock` (an exclusive
  `flock` on `<run>/.lock`, held for the run's life and released by the kernel when
  the process ends, kill -9 included) before anything in it is read or changed; a
  second writer gets a `ConfigError`.
- `replacing` (`--overwrite`) moves the old run's files aside into a hidden folder while
  the new run starts, puts them back if it fails, and deletes them once it has started.
  A process killed in between is repaired by the next `prepare_run_dir`.
- `reserve` / `write_summary`: some disk held back at the start, given up to write
  `summary.json` when the disk fills, so a run that dies of a full disk still says so.
- `run_meta`: versions, device and commit, the `meta` every `train_config.json` starts with.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import platform
import shutil
import subprocess
import tempfile
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import tfkit
from tfkit.errors import ConfigError
from tfkit.io import write_atomic, write_json_atomic

RUN_FILES = (
    "train_config.json",
    "train_log.csv",
    "val_log.csv",
    "summary.json",
    "checkpoints",
    "tensorboard",
    "spikes.csv",
    "step_losses.csv",
    "beliefs.json",
    "beliefs.csv",
    "belief_points.csv",
)
LOCK_NAME = ".lock"
REPLACED_PREFIX = ".replaced."  # `.replaced.<random>.tmp`: an old run set aside (S3 pushes skip `.*.tmp`)
SUMMARY_RESERVE_NAME = ".summary-reserve.tmp"
SUMMARY_RESERVE_BYTES = 64 * 1024


class RunDirLock:
    """An exclusive `flock` on `<run_dir>/.lock`: one writer per run directory.

    The kernel releases it when the holder closes it or dies (kill -9 included), so a
    crashed run never blocks the next one. The file holds the holder's process id, for
    the message a second writer gets. It is released when dropped, too.
    """

    def __init__(self, path: Path, fd: int | None) -> None:
        self.path = path
        self._close = weakref.finalize(self, os.close, fd) if fd is not None else None

    @classmethod
    def acquire(cls, run_dir: Path) -> RunDirLock:
        """Lock `run_dir` (which exists), or raise `ConfigError` naming the process that holds it."""
        path = run_dir / LOCK_NAME
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip()
            os.close(fd)
            if holder == str(os.getpid()):  # a run of this process that failed before it started, not yet dropped
                raise ConfigError(f"{run_dir} is in use by another run in this process") from None
            by = f" (process {holder})" if holder.isdigit() else ""
            raise ConfigError(
                f"{run_dir} is in use by another tfkit run{by}; wait for it to end or choose another --out"
            ) from None
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):  # a file system without locks
                return cls(path, None)
            raise
        with contextlib.suppress(OSError):  # the id is a courtesy: a full disk must not stop the run here
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return cls(path, fd)

    def release(self) -> None:
        if self._close is not None:
            self._close()


def prepare_run_dir(run_dir: Path, overwrite: bool) -> tuple[RunDirLock, list[str]]:
    """Create and lock the run directory; refuse to mix a new run into an old one unless asked.

    Returns the lock (held until released, or the process ends) and the names of the old
    run's files, for `replacing` once the new run starts: nothing is moved or deleted
    here. Raises `ConfigError` when `run_dir` is a file or inside one, is in use by
    another process, or holds a run and `overwrite` is not set.
    """
    for path in (run_dir, *run_dir.parents):
        if path.exists() and not path.is_dir():
            where = "is a file" if path == run_dir else f"is inside {path}, which is a file"
            raise ConfigError(f"--out {run_dir} {where}, not a folder")
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = RunDirLock.acquire(run_dir)
    try:
        _recover(run_dir)
        existing = [name for name in RUN_FILES if (run_dir / name).exists()]
        if existing and not overwrite:
            raise ConfigError(
                f"{run_dir} already holds a run ({existing[0]}); choose another --out or pass --overwrite"
            )
    except BaseException:
        lock.release()
        raise
    return lock, existing


@contextlib.contextmanager
def replacing(run_dir: Path, names: list[str]) -> Iterator[None]:
    """Set the old run's `names` aside while the body starts the new run; put them back if it fails.

    The body writes the new run's first files (`train_config.json`); when it raises, what
    it wrote under `RUN_FILES` is removed and the old files return unchanged. Once it
    returns, the old files are deleted. Moving them is renaming: it needs no disk space.
    Files that were there and not set aside (a resumed run's logs and checkpoints) are
    never removed.
    """
    kept = {name for name in RUN_FILES if (run_dir / name).exists() and name not in names}
    # a resumed run's record is rewritten by the body: its old bytes go back if the start fails
    record = run_dir / "train_config.json"
    old_record = record.read_bytes() if "train_config.json" in kept else None
    aside = _set_aside(run_dir, names) if names else None
    try:
        yield
    except BaseException:
        for name in RUN_FILES:
            if name not in kept:
                _remove(run_dir / name)
        if old_record is not None:
            write_atomic(record, lambda tmp: tmp.write_bytes(old_record))
        if aside is not None:
            _put_back(run_dir, aside)
        raise
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)


def _set_aside(run_dir: Path, names: list[str]) -> Path:
    aside = Path(tempfile.mkdtemp(prefix=REPLACED_PREFIX, suffix=".tmp", dir=run_dir))
    try:
        for name in names:
            os.replace(run_dir / name, aside / name)
    except BaseException:
        _put_back(run_dir, aside)
        raise
    return aside


def _put_back(run_dir: Path, aside: Path) -> None:
    """Put the files of `aside` back in place of whatever is there now, and remove `aside`."""
    for entry in aside.iterdir():
        _remove(run_dir / entry.name)
        os.replace(entry, run_dir / entry.name)
    aside.rmdir()


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _recover(run_dir: Path) -> None:
    """Finish a replacement that a killed process left half done (under the lock).

    Without `train_config.json` the new run never started: the old run's files go back.
    With it, the new run had started: the old files only wait to be deleted.
    """
    for aside in run_dir.glob(f"{REPLACED_PREFIX}*.tmp"):
        if not aside.is_dir():
            continue
        if (run_dir / "train_config.json").exists():
            shutil.rmtree(aside, ignore_errors=True)
        else:
            _put_back(run_dir, aside)


def reserve(run_dir: Path) -> None:
    """Hold some disk in `run_dir` for `write_summary` to give up on a full disk (best effort)."""
    path = run_dir / SUMMARY_RESERVE_NAME
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
    except OSError:
        return
    try:
        # real bytes: zeros may take no space on a compressing file system
        os.write(fd, os.urandom(SUMMARY_RESERVE_BYTES))
        os.fsync(fd)
    except OSError:
        path.unlink(missing_ok=True)
    finally:
        os.close(fd)


def release_reserve(run_dir: Path) -> None:
    (run_dir / SUMMARY_RESERVE_NAME).unlink(missing_ok=True)


def write_summary(run_dir: Path, summary: dict[str, Any]) -> None:
    """Write `summary.json` atomically; on a full disk, give up the reserved space and try again."""
    path = run_dir / "summary.json"
    try:
        write_json_atomic(path, summary)
    except OSError:
        reserved = run_dir / SUMMARY_RESERVE_NAME
        if not reserved.exists():
            raise
        reserved.unlink()
        write_json_atomic(path, summary)


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def run_meta(device: Any, compiled: bool) -> dict[str, Any]:
    """Versions, device (a `torch.device`) and commit: the `meta` every train_config.json starts with."""
    import torch

    return {
        "tfkit_version": tfkit.__version__,
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
        "compiled": compiled,
        "git_commit": _git_commit(),
    }
