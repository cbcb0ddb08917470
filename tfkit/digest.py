"""sha256 digests kept beside files: `<file>.sha256`, one line in `sha256sum` format.

A checkpoint is hashed once when it is saved, and its digest written beside it
(`checkpoints/1280.pt.sha256` holds `<64 hex digits>  1280.pt`), so
`cd checkpoints && sha256sum -c 1280.pt.sha256` checks it too. Readers hash the file
again and compare (`verify_digest`): a checkpoint whose bytes changed after it was saved
(a flipped bit on disk, a truncated copy) is refused instead of trained on. A file without
a digest (saved by an older tfkit) is read as before. Nothing here imports torch.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from tfkit.errors import DataError
from tfkit.io import write_atomic

DIGEST_SUFFIX = ".sha256"
_LINE = re.compile(rb"([0-9a-fA-F]{64})(?: [ *](\S[^\r\n]*))?\r?\n?")


def digest_path(path: str | Path) -> Path:
    """Where the digest of `path` is kept: `<path>.sha256`."""
    path = Path(path)
    return path.with_name(path.name + DIGEST_SUFFIX)


def file_sha256(path: str | Path) -> str:
    """The sha256 of a file's bytes, as 64 hex digits."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def digest_line(digest: str, name: str) -> bytes:
    """The `sha256sum` line of a file named `name`."""
    return f"{digest}  {name}\n".encode()


def parse_digest(data: bytes) -> str | None:
    """The digest a `.sha256` file's bytes hold, or None when they are not one `sha256sum` line."""
    if len(data) > 4096:  # one line: a name and 64 digits
        return None
    match = _LINE.fullmatch(data)
    return match.group(1).decode().lower() if match else None


def write_digest(path: Path, digest: str) -> None:
    """Write `<path>.sha256` atomically (temp file, fsync, rename)."""

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            f.write(digest_line(digest, path.name))
            f.flush()
            os.fsync(f.fileno())

    write_atomic(digest_path(path), write)


def verify_digest(path: str | Path) -> str | None:
    """Check `path` against its `.sha256` file: its digest, or None when it has none.

    Raises `DataError` naming `path` when the bytes differ from those saved, or when the
    digest file is not one.
    """
    path = Path(path)
    side = digest_path(path)
    try:
        data = side.read_bytes()
    except FileNotFoundError:
        return None
    except IsADirectoryError:
        raise DataError(f"{path}: its digest file {side.name} is a folder, not a sha256 line") from None
    expected = parse_digest(data)
    if expected is None:
        raise DataError(f"{path}: its digest file {side.name} does not hold a sha256 line")
    got = file_sha256(path)
    if got != expected:
        raise DataError(
            f"{path} is corrupt: its sha256 {got[:12]}... is not the {expected[:12]}... recorded in {side.name} "
            "when it was saved"
        )
    return got
