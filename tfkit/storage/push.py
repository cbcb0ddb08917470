"""Push: a local directory up to a store, synced against the manifest there.

Files whose sha256 and size match the remote manifest (and whose object is still there)
are not sent again; the manifest (`tfkit.storage.manifest`) goes up last, so a push that
fails or is interrupted never looks complete. What a push did comes back as a `PushResult`.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tfkit.errors import StorageError
from tfkit.storage.client import Connection
from tfkit.storage.listing import StoredObject, list_objects, read_manifest
from tfkit.storage.manifest import (
    MANIFEST_NAME,
    BoundedReader,
    FileEntry,
    manifest_bytes,
    never_pushed,
    scan_directory,
    sha256_of,
)
from tfkit.storage.transfers import TransferCallback, Transfers, run_parallel
from tfkit.storage.uri import S3Uri, as_s3_uri

HashCache = dict[str, tuple[tuple[int, int, int], str]]  # rel -> ((inode, size, mtime_ns), sha256)


@dataclass
class PushResult:
    uri: str
    uploaded: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    bytes_uploaded: int = 0
    manifest_uploaded: bool = False
    skipped_symlinks: list[str] = field(default_factory=list)  # symlinks leading out of the directory
    dry_run: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def push_directory(
    conn: Connection,
    local_dir: str | Path,
    uri: str | S3Uri,
    *,
    include: Iterable[str] = (),
    exclude: Iterable[str] = (),
    dry_run: bool = False,
    callback: TransferCallback | None = None,
    mirror: bool = False,
    hash_cache: HashCache | None = None,
    follow_symlinks: bool = False,
) -> PushResult:
    """Upload the files of `local_dir` under `uri` that differ from the remote manifest.

    Files whose sha256 and size match the manifest (and whose object is still there)
    are not sent again. The manifest goes up last, listing every file pushed now plus
    the earlier entries whose objects remain (`mirror=True`: only the files pushed now).
    Symlinks that lead out of `local_dir` are left out and listed in the result's
    `skipped_symlinks` (`follow_symlinks=True`: the files they point to are pushed).

    Args:
        include, exclude: globs on the relative path (or on the file name, for
            patterns without `/`); exclude wins.
        hash_cache: reused between pushes of a growing directory, so unchanged files
            (same inode, size and mtime) are not hashed again.
    """
    target = as_s3_uri(uri)
    root = Path(local_dir)
    if not root.is_dir():
        raise StorageError(f"{root} is not a directory")
    include, exclude = list(include), list(exclude)
    skipped: list[str] = []
    rels = scan_directory(root, include, exclude, follow_symlinks=follow_symlinks, skipped=skipped)
    if not rels:
        filtered = " that match --include/--exclude" if include or exclude else ""
        raise StorageError(f"no files{filtered} to push in {root}")
    callback = callback or TransferCallback()
    result = PushResult(uri=str(target), skipped_symlinks=skipped, dry_run=dry_run)
    with conn.errors(target):
        remote = list_objects(conn, target)
        old = read_manifest(conn, target, remote, strict=False)
        sizes = {}
        for rel in rels:
            with contextlib.suppress(FileNotFoundError):
                sizes[rel] = (root / rel).stat().st_size
        callback.on_start(sum(sizes.values()), len(sizes))
        files = _FilePushes(root, target, remote, old, result, callback, hash_cache)
        run_parallel(conn, files.push_one, list(sizes))
        result.uploaded.sort()
        result.unchanged.sort()
        _push_manifest(conn, target, remote, old, files.entries, result, mirror)
    return result


class _FilePushes:
    """The files of one push, each pushed by `push_one` (from several threads at once) into `result`."""

    def __init__(
        self,
        root: Path,
        target: S3Uri,
        remote: dict[str, StoredObject],
        old: dict[str, FileEntry] | None,
        result: PushResult,
        callback: TransferCallback,
        hash_cache: HashCache | None,
    ) -> None:
        self.root, self.target, self.remote, self.old = root, target, remote, old
        self.result, self.callback, self.hash_cache = result, callback, hash_cache
        self.entries: dict[str, FileEntry] = {}  # what each file pushed (or found unchanged) holds
        self._lock = threading.Lock()

    def push_one(self, transfers: Transfers, rel: str) -> None:
        """Hash the file `rel` and upload it unless the remote manifest already has it."""
        try:
            f = open(self.root / rel, "rb")  # noqa: SIM115  (closed by the transfer below)
        except FileNotFoundError:  # removed since the scan (a temp file renamed away)
            return
        except OSError as e:
            raise StorageError(f"cannot read {self.root / rel}: {e.strerror or e}") from None
        dry_run = self.result.dry_run
        with f:
            st = os.fstat(f.fileno())
            entry = FileEntry(st.st_size, self._digest(rel, f, st))
            obj = self.remote.get(rel)
            old = self.old
            same = old is not None and old.get(rel) == entry and obj is not None and obj.size == entry.size
            if not same and not dry_run:
                reader = BoundedReader(f, entry.size)
                transfers.upload(reader, entry.size, self.target.bucket, self.target.key(rel), self.callback.on_bytes)
            elif entry.size:
                self.callback.on_bytes(entry.size)
        with self._lock:
            self.entries[rel] = entry
            if same:
                self.result.unchanged.append(rel)
            else:
                self.result.uploaded.append(rel)
                self.result.bytes_uploaded += entry.size
        action = "unchanged" if same else ("would upload" if dry_run else "uploaded")
        self.callback.on_file(rel, action)

    def _digest(self, rel: str, f: Any, st: os.stat_result) -> str:
        """The sha256 of the open file `rel` (`st`: its stat), from the hash cache while its inode, size
        and mtime stay."""
        stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
        cached = self.hash_cache.get(rel) if self.hash_cache is not None else None
        digest = cached[1] if cached and cached[0] == stamp else sha256_of(f, st.st_size)
        if self.hash_cache is not None:
            with self._lock:
                self.hash_cache[rel] = (stamp, digest)
        return digest


def _push_manifest(
    conn: Connection,
    target: S3Uri,
    remote: dict[str, StoredObject],
    old: dict[str, FileEntry] | None,
    entries: dict[str, FileEntry],
    result: PushResult,
    mirror: bool,
) -> None:
    """Upload the manifest after the files: `entries`, plus (unless `mirror`) the earlier entries
    whose objects remain; only if something was uploaded or the manifest changes."""
    files: dict[str, FileEntry] = {}
    if old is not None and not mirror:
        still_there = {rel for rel, obj in remote.items() if rel in old and obj.size == old[rel].size}
        files = {rel: e for rel, e in old.items() if rel in still_there and not never_pushed(rel)}
    files.update(entries)
    if not result.dry_run and (result.uploaded or files != old):
        conn.client.put_object(
            Bucket=target.bucket,
            Key=target.key(MANIFEST_NAME),
            Body=manifest_bytes(files),
            ContentType="application/json",
        )
        result.manifest_uploaded = True
