"""The local side of S3 sync: which files to send, their sha256 manifest, and safe paths.

A pushed directory carries one manifest object, `.tfkit-manifest.json`, beside its files:

    {"format": "tfkit-manifest", "version": 1,
     "files": {"train_log.csv": {"size": 1234, "sha256": "9f86d0..."}, ...}}

It is uploaded after every file it lists, so a manifest never names an object that is
not there yet; push compares against it to skip unchanged files, and pull verifies every
downloaded file against it. A pulled directory keeps a local record in the same format,
`.tfkit-pulled.json`: what pulls wrote there, so a later pull can tell a file that is
merely out of date from one edited since. Nothing here talks to the network.
"""

from __future__ import annotations

import fnmatch
import hashlib
import io
import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from tfkit.errors import StorageError

MANIFEST_NAME = ".tfkit-manifest.json"
PULLED_NAME = ".tfkit-pulled.json"  # in a pulled directory: the files pulls wrote there
MANIFEST_FORMAT = "tfkit-manifest"
MANIFEST_VERSION = 1

_CHUNK = 1024 * 1024
_DRIVE = re.compile(r"^[A-Za-z]:")


@dataclass(frozen=True)
class FileEntry:
    """One file as the manifest records it."""

    size: int
    sha256: str


def manifest_bytes(files: dict[str, FileEntry]) -> bytes:
    body = {
        "format": MANIFEST_FORMAT,
        "version": MANIFEST_VERSION,
        "files": {rel: {"size": e.size, "sha256": e.sha256} for rel, e in sorted(files.items())},
    }
    return (json.dumps(body, indent=1) + "\n").encode()


def parse_manifest(data: bytes, where: str) -> dict[str, FileEntry]:
    """Read a manifest; raise `StorageError` naming `where` if it is not one."""
    try:
        body = json.loads(data)
        if body.get("format") != MANIFEST_FORMAT:
            raise ValueError("not a tfkit manifest")
        if body.get("version") != MANIFEST_VERSION:
            raise ValueError(f"manifest version {body.get('version')!r} is not {MANIFEST_VERSION}")
        files = {}
        for rel, entry in body["files"].items():
            size, digest = entry["size"], entry["sha256"]
            if not isinstance(size, int) or not re.fullmatch(r"[0-9a-f]{64}", str(digest)):
                raise ValueError(f"bad entry for {rel!r}")
            files[str(rel)] = FileEntry(size, digest)
        return files
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise StorageError(f"{where} is not a valid tfkit manifest ({e})") from None


def matches(rel: str, patterns: Iterable[str]) -> bool:
    """Whether a relative path matches any glob: on the whole path, or on the file name
    for patterns without a slash (`*.csv` matches `logs/a.csv`)."""
    name = rel.rsplit("/", 1)[-1]
    for pattern in patterns:
        if fnmatch.fnmatchcase(rel, pattern):
            return True
        if "/" not in pattern and fnmatch.fnmatchcase(name, pattern):
            return True
    return False


def selected(rel: str, include: Iterable[str], exclude: Iterable[str]) -> bool:
    """Kept if it matches an include (or none are given) and no exclude."""
    include = list(include)
    if include and not matches(rel, include):
        return False
    return not matches(rel, exclude)


def never_pushed(rel: str) -> bool:
    """Files push always leaves out: the manifest itself, the records of pulls, `.env` files
    (`.env`, `.env.local`, `prod.env`: they hold credentials), and the `.<name>.<random>.tmp`
    files and folders of writes in progress."""
    parts = rel.split("/")
    if rel == MANIFEST_NAME or parts[-1] == PULLED_NAME:
        return True
    if parts[-1] == ".env" or parts[-1].startswith(".env.") or parts[-1].endswith(".env"):
        return True
    return any(part.startswith(".") and part.endswith(".tmp") for part in parts)


def scan_directory(
    root: Path,
    include: Iterable[str] = (),
    exclude: Iterable[str] = (),
    *,
    follow_symlinks: bool = False,
    skipped: list[str] | None = None,
) -> list[str]:
    """Relative POSIX paths of the regular files under `root`, sorted, after the globs.

    Symlinked files that resolve inside `root` are followed; those that lead outside it
    are left out (their paths appended to `skipped`), unless `follow_symlinks`.
    Symlinked folders are never entered.
    """
    include, exclude = list(include), list(exclude)
    top = root.resolve()
    out = []
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        base = Path(folder)
        for name in files:
            path = base / name
            if not path.is_file():
                continue
            rel = path.relative_to(root).as_posix()
            if never_pushed(rel) or not selected(rel, include, exclude):
                continue
            if not follow_symlinks and path.is_symlink() and not path.resolve().is_relative_to(top):
                if skipped is not None:
                    skipped.append(rel)
                continue
            out.append(rel)
    if skipped is not None:
        skipped.sort()
    return sorted(out)


def sha256_of(fileobj: io.BufferedIOBase | Any, limit: int | None = None) -> str:
    """The sha256 of a binary file object from its current position, up to `limit` bytes."""
    digest = hashlib.sha256()
    left = limit
    while left is None or left > 0:
        chunk = fileobj.read(_CHUNK if left is None else min(_CHUNK, left))
        if not chunk:
            break
        digest.update(chunk)
        if left is not None:
            left -= len(chunk)
    return digest.hexdigest()


def sha256_file(path: Path) -> str:
    with open(path, "rb") as f:
        return sha256_of(f)


class BoundedReader(io.RawIOBase):
    """The first `size` bytes of an open file, as a seekable read-only stream.

    Pushing a file that is still being appended to (a run's CSV logs during training)
    sends exactly the bytes that were hashed, not whatever was added in between.
    """

    def __init__(self, fileobj: Any, size: int) -> None:
        super().__init__()
        self._f = fileobj
        self._size = size
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, min(self._size, base + offset))
        return self._pos

    def read(self, size: int | None = -1) -> bytes:
        left = self._size - self._pos
        if size is None or size < 0 or size > left:
            size = left
        if size <= 0:
            return b""
        self._f.seek(self._pos)
        data = self._f.read(size)
        self._pos += len(data)
        return data

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def unsafe_reason(rel: str) -> str | None:
    """Why a remote relative key must not become a local path, or None if it is safe.

    Refused: absolute paths (`/x`, `\\x`, `C:x`), any `..` component (with `/` or `\\`
    as separator) and NUL bytes. Names that merely contain dots (`a..b.txt`) are fine.
    """
    if not rel:
        return "empty name"
    if "\x00" in rel:
        return "NUL byte in name"
    if rel.startswith(("/", "\\")) or _DRIVE.match(rel):
        return "absolute path"
    parts = re.split(r"[/\\]", rel)
    if any(part == ".." for part in parts):
        return "'..' component"
    if all(part in ("", ".") for part in parts):
        return "not a file name"
    return None


def local_path(dest: Path, rel: str, name: str | None = None) -> Path:
    """Where remote file `rel` lands under `dest`; raises `StorageError` naming the key
    (`name`, default `rel`) if it would land outside."""
    reason = unsafe_reason(rel)
    if reason is None:
        path = dest.joinpath(*PurePosixPath(rel).parts)
        # also catches a symlink inside dest that points elsewhere
        if path.resolve().is_relative_to(dest.resolve()):
            return path
        reason = "resolves outside the destination"
    raise StorageError(f"refusing {name or rel!r} ({reason}): it would land outside {dest}; use --exclude to skip it")
