"""Small file helpers shared by the library: atomic writes of files and folders, whole appends."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


@functools.cache
def current_umask() -> int:
    """The process umask (temp files are created private; finished files get the usual mode)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomic(path: str | Path, write: Callable[[Path], None]) -> None:
    """Call `write(tmp_path)` on a temp file beside `path`, then rename it into place.

    A reader never sees half a file, and an interrupted write leaves the old file intact.
    A write that fails on the file system (a full disk) raises its `OSError` naming `path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~current_umask())
        try:
            os.replace(tmp, path)
        except OSError as e:  # it names the temp file first; the user knows `path` (a folder standing there)
            raise OSError(e.errno, e.strerror, str(path)) from None
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        raise with_filename(e, path) from None


def write_json_atomic(path: str | Path, data: Any) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "w") as f:
            json.dump(data, f, indent=2, sort_keys=False, default=str)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())

    write_atomic(path, write)


def write_dir_atomic(path: str | Path, write: Callable[[Path], None], *, replace: bool = False) -> None:
    """Call `write(tmp_dir)` on an empty temp folder beside `path`, then move it into place.

    An interrupted or failed write leaves nothing at `path` (or the old folder, untouched).
    With `replace`, an existing `path` is swapped out only after the new folder is complete.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        os.chmod(tmp, 0o777 & ~current_umask())
        write(tmp)
        if path.exists():
            if not replace and any(path.iterdir()):
                raise FileExistsError(f"{path} is not empty")
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.replace(path, old / "dir")
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def append_whole(fd: int, data: bytes, path: str | Path) -> None:
    """Append `data` to the file open at `fd`, durably, whole or not at all.

    One `write` in the usual case (a short write is continued), then `fsync`. If anything
    fails on the way (a full disk, a read-only remount, a signal), the file is cut back
    to its previous length so no partial line remains, and the error is raised with
    `path` as its filename. For a file with one writer (a run's logs).
    """
    start = os.lseek(fd, 0, os.SEEK_END)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, start)
            os.lseek(fd, start, os.SEEK_SET)
        raise with_filename(e, path) from None


def with_filename(exc: BaseException, path: str | Path) -> BaseException:
    """`exc`, or for an `OSError` without a filename (a write, an fsync) the same error naming `path`."""
    if isinstance(exc, OSError) and exc.errno is not None and exc.filename is None:
        return OSError(exc.errno, exc.strerror, str(path))
    return exc
