"""Pull: what is stored under a prefix down into a local directory, every file verified.

With a manifest, exactly the files it lists are pulled and each must match its sha256;
without one, every object is pulled and checked against its listed size. A file stored
with a digest beside it (a checkpoint and its `<name>.sha256`) must match that digest too
(`_digest_problem`). Each file is written to a temp file and renamed into place only once
verified (`_FilePulls.download`). Before anything is written, every local file is looked
at (`_local_state`): local changes are kept unless forced, against the record of what
earlier pulls wrote (`.tfkit-pulled.json`). What a pull did comes back as a `PullResult`.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
import threading
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tfkit.digest import DIGEST_SUFFIX, parse_digest
from tfkit.errors import StorageError
from tfkit.io import current_umask, write_atomic
from tfkit.storage.client import Connection
from tfkit.storage.listing import StoredObject, list_objects, read_manifest
from tfkit.storage.manifest import (
    MANIFEST_NAME,
    PULLED_NAME,
    FileEntry,
    local_path,
    manifest_bytes,
    parse_manifest,
    selected,
    sha256_file,
)
from tfkit.storage.transfers import TransferCallback, Transfers, map_parallel, run_parallel
from tfkit.storage.uri import S3Uri, as_s3_uri

_MD5 = re.compile(r"[0-9a-f]{32}")
_NOT_AS_SAVED = "not as saved: "

_Wanted = dict[str, tuple[int, FileEntry | None]]  # rel -> (its size, its manifest entry if there is a manifest)
_States = dict[str, tuple[str, str | None]]  # rel -> (what is at its local path, its sha256 if it was read)


@dataclass
class PullResult:
    uri: str
    dest: str
    downloaded: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    bytes_downloaded: int = 0
    verified: bool = False  # every file checked against the manifest's sha256
    unlisted: list[str] = field(default_factory=list)  # objects the manifest does not list (left out)
    overwritten: list[str] = field(default_factory=list)  # local changes replaced (force=True)
    dry_run: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def pull_directory(
    conn: Connection,
    uri: str | S3Uri,
    dest: str | Path,
    *,
    include: Iterable[str] = (),
    exclude: Iterable[str] = (),
    dry_run: bool = False,
    callback: TransferCallback | None = None,
    force: bool = False,
) -> PullResult:
    """Download the files under `uri` into `dest`, verified against the manifest.

    With a manifest, exactly the files it lists are pulled and each must match its
    sha256 (objects it does not list are left out and reported); without one, every
    object is pulled and checked against its listed size. A file stored with a digest
    beside it (a checkpoint and its `<name>.sha256`, written when it was saved) must
    also match that digest: the manifest vouches for the transfer, the digest for the
    bytes the trainer wrote, so a checkpoint that rotted before it was pushed is refused
    too. Files already present and
    identical are skipped. Each file is written to a temp file beside its target and
    renamed into place only once verified (with the mode of any new file under the
    umask), so a failed or interrupted pull never leaves a partial or bad file under a
    real name. Keys that would land outside `dest` are refused before anything is
    downloaded.

    Local changes are kept: `dest/.tfkit-pulled.json` records what pulls wrote there,
    and a local file that differs from the remote one is replaced only if it is still
    what an earlier pull wrote. Any other (edited since, or never pulled) makes the
    pull refuse before anything is written, naming them, unless `force`.
    """
    source = as_s3_uri(uri)
    dest = Path(dest)
    if dest.exists() and not dest.is_dir():
        raise StorageError(f"{dest} exists and is not a directory")
    include, exclude = list(include), list(exclude)
    callback = callback or TransferCallback()
    result = PullResult(uri=str(source), dest=str(dest), dry_run=dry_run)
    with conn.errors(source):
        remote = list_objects(conn, source)
        if not remote:
            raise StorageError(f"nothing found at {source}")
        manifest = read_manifest(conn, source, remote, strict=True)
        result.verified = manifest is not None
        wanted, result.unlisted = _wanted(source, remote, manifest, include, exclude)
        targets = _targets(source, dest, wanted)
        # every local file is looked at before anything is written
        record = _read_record(dest)

        def look(rel: str) -> tuple[str, str | None]:
            size, entry = wanted[rel]
            return _local_state(targets[rel], size, entry, remote[rel], record.get(rel))

        states = dict(zip(sorted(wanted), map_parallel(conn.jobs, look, sorted(wanted)), strict=True))
        result.overwritten = _changed_locally(states, source, dest, force)
        saved = {} if dry_run else _saved_digests(conn, source, remote, sorted(wanted))
        callback.on_start(sum(size for size, _ in wanted.values()), len(wanted))
        files = _FilePulls(source, dest, wanted, targets, states, saved, result, callback)
        try:
            run_parallel(conn, files.pull_one, sorted(wanted))
        except BaseException:
            if not dry_run:
                with contextlib.suppress(OSError):  # the error in flight says more
                    _write_record(dest, {**record, **files.pulled})
            raise
        if not dry_run:
            try:
                _write_record(dest, {**record, **files.pulled})
            except OSError as e:
                raise StorageError(f"cannot write {dest / PULLED_NAME}: {e.strerror or e}") from None
        result.downloaded.sort()
        result.unchanged.sort()
        _raise_problems(source, manifest is not None, files.bad, files.corrupt)
    return result


def _wanted(
    source: S3Uri,
    remote: dict[str, StoredObject],
    manifest: dict[str, FileEntry] | None,
    include: list[str],
    exclude: list[str],
) -> tuple[_Wanted, list[str]]:
    """The files to pull, and the objects the manifest does not list (left out)."""
    wanted: _Wanted = {}
    unlisted: list[str] = []
    if manifest is not None:
        for rel, entry in manifest.items():
            if selected(rel, include, exclude) and rel != PULLED_NAME:
                if rel not in remote:
                    raise StorageError(f"the manifest lists {source.url(rel)}, but the object is missing")
                wanted[rel] = (entry.size, entry)
        extra = [rel for rel in remote if rel != MANIFEST_NAME and rel not in manifest]
        unlisted = sorted(rel for rel in extra if selected(rel, include, exclude))
    else:
        for rel, obj in remote.items():
            if rel not in (MANIFEST_NAME, PULLED_NAME) and selected(rel, include, exclude):
                wanted[rel] = (obj.size, None)
    if not wanted:
        raise StorageError(f"no files at {source} match --include/--exclude")
    return wanted, unlisted


def _targets(source: S3Uri, dest: Path, wanted: _Wanted) -> dict[str, Path]:
    """Where each file lands under `dest`; refuses keys that land outside it, or two on one path."""
    targets: dict[str, Path] = {}
    seen: dict[Path, str] = {}
    for rel in sorted(wanted):
        path = local_path(dest, rel, source.url(rel))
        if path in seen:
            both = f"{source.url(rel)} and {source.url(seen[path])}"
            raise StorageError(f"{both} would both be written to {path}")
        seen[path] = rel
        targets[rel] = path
    return targets


def _changed_locally(states: _States, source: S3Uri, dest: Path, force: bool) -> list[str]:
    """The local files a pull would replace that are not what an earlier pull wrote; refused unless `force`."""
    changed = [rel for rel, (state, _) in states.items() if state == "changed"]
    if changed and not force:
        shown = ", ".join(changed[:10]) + (f" and {len(changed) - 10} more" if len(changed) > 10 else "")
        raise StorageError(
            f"{len(changed)} file(s) in {dest} differ from {source} and are not what an earlier pull "
            f"wrote (changed locally?): {shown}; nothing was pulled; pass --force to replace them"
        )
    return changed


def _raise_problems(source: S3Uri, with_manifest: bool, bad: list[str], corrupt: list[str]) -> None:
    """Raise one `StorageError` naming the files that did not verify, if any did not."""
    problems = []
    if bad:
        what = "the manifest" if with_manifest else "the listing"
        problems.append(
            f"{len(bad)} file(s) from {source} did not match {what} and were not written: " + "; ".join(sorted(bad))
        )
    if corrupt:
        problems.append(
            f"{len(corrupt)} checkpoint(s) from {source} are corrupt (their bytes changed after they were "
            "saved, before the push) and were not written: " + "; ".join(sorted(corrupt))
        )
    if problems:
        raise StorageError("; ".join(problems))


class _FilePulls:
    """The files of one pull, each pulled by `pull_one` (from several threads at once) into `result`."""

    def __init__(
        self,
        source: S3Uri,
        dest: Path,
        wanted: _Wanted,
        targets: dict[str, Path],
        states: _States,
        saved: dict[str, str],
        result: PullResult,
        callback: TransferCallback,
    ) -> None:
        self.source, self.dest, self.wanted, self.targets = source, dest, wanted, targets
        self.states, self.saved, self.result, self.callback = states, saved, result, callback
        self.bad: list[str] = []  # what did not match the manifest (or the listing)
        self.corrupt: list[str] = []  # what does not match the digest saved with it
        self.pulled: dict[str, FileEntry] = {}  # what is now on disk as the remote has it
        self._lock = threading.Lock()

    def pull_one(self, transfers: Transfers, rel: str) -> None:
        """Pull the file `rel` unless it is already there, identical."""
        size, entry = self.wanted[rel]
        state, digest = self.states[rel]
        callback, result = self.callback, self.result
        if state == "identical":
            callback.on_bytes(size)
            problem = _digest_problem(rel, digest, self.saved)
            with self._lock:
                result.unchanged.append(rel)
                self.pulled[rel] = FileEntry(size, digest or "")
                if problem:
                    self.corrupt.append(f"{rel} ({problem}; the copy in {self.dest} is the same)")
            callback.on_file(rel, "corrupt" if problem else "unchanged")
            return
        if result.dry_run:
            callback.on_bytes(size)
            with self._lock:
                result.downloaded.append(rel)
                result.bytes_downloaded += size
            callback.on_file(rel, "would download")
            return
        problem, digest = self.download(transfers, rel, self.targets[rel], size, entry)
        with self._lock:
            if problem and problem.startswith(_NOT_AS_SAVED):
                self.corrupt.append(f"{rel} ({problem})")
            elif problem:
                self.bad.append(f"{rel} ({problem})")
            else:
                result.downloaded.append(rel)
                result.bytes_downloaded += size
                self.pulled[rel] = FileEntry(size, digest)
        callback.on_file(rel, "corrupt" if problem else "downloaded")

    def download(
        self, transfers: Transfers, rel: str, path: Path, size: int, entry: FileEntry | None
    ) -> tuple[str | None, str]:
        """Download one object through a temp file; rename it into place if it verifies.

        It verifies when it matches its manifest `entry` (or listed `size`) and the digest
        saved beside it, if any.

        Returns (None, its sha256) on success, or (what was wrong, "") after removing the
        temp file. The file gets the mode any new file gets under the umask (the temp
        file was created private).
        """
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        except OSError as e:
            raise StorageError(f"cannot write {path}: {e.strerror or e}") from None
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as f:
                transfers.download(self.source.bucket, self.source.key(rel), f, size, self.callback.on_bytes)
                f.flush()
                os.fsync(f.fileno())
            got = tmp.stat().st_size
            digest = sha256_file(tmp)
            if entry is not None:
                if got != entry.size or digest != entry.sha256:
                    tmp.unlink()
                    expected = f"expected {entry.sha256[:12]}..., {entry.size} bytes"
                    return f"sha256 {digest[:12]}..., {got} bytes; {expected}", ""
            elif got != size:
                tmp.unlink()
                return f"{got} bytes, listed as {size}", ""
            problem = _digest_problem(rel, digest, self.saved)
            if problem:
                tmp.unlink()
                return problem, ""
            try:
                os.chmod(tmp, 0o666 & ~current_umask())
                os.replace(tmp, path)
            except OSError as e:
                raise StorageError(f"cannot write {path}: {e.strerror or e}") from None
            return None, digest
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


def _local_state(
    path: Path, size: int, entry: FileEntry | None, obj: StoredObject, recorded: FileEntry | None
) -> tuple[str, str | None]:
    """What a pull finds at `path`, and its sha256 when it was read.

    "missing"; "identical" to the remote file; "stale": different, but what an earlier
    pull wrote (`recorded`), so replacing it loses nothing; "changed": neither (edited
    since, or never pulled). An unreadable or non-regular file counts as missing:
    downloading it again reports any real problem when the new file is renamed into place.
    """
    try:
        if not path.is_file():
            return "missing", None
        got = path.stat().st_size
        if got != size and (recorded is None or got != recorded.size):
            return "changed", None
        digest = sha256_file(path)
        if got == size:
            if entry is not None and digest == entry.sha256:
                return "identical", digest
            if entry is None and _MD5.fullmatch(obj.etag):  # single-part uploads: the ETag is the MD5
                md5 = hashlib.md5(usedforsecurity=False)
                with open(path, "rb") as f:
                    for chunk in iter(lambda: f.read(1024 * 1024), b""):
                        md5.update(chunk)
                if md5.hexdigest() == obj.etag:
                    return "identical", digest
    except OSError:
        return "missing", None
    if recorded == FileEntry(got, digest):
        return "stale", digest
    return "changed", digest


def _saved_digests(conn: Connection, uri: S3Uri, remote: dict[str, StoredObject], rels: list[str]) -> dict[str, str]:
    """The digest each of `rels` has beside it in the store (`<rel>.sha256`): "" where that is not one."""
    sides = [rel for rel in rels if rel + DIGEST_SUFFIX in remote]

    def read(rel: str) -> str:
        side = rel + DIGEST_SUFFIX
        if remote[side].size > 4096:  # one sha256sum line
            return ""
        body = conn.client.get_object(Bucket=uri.bucket, Key=uri.key(side))["Body"].read()
        return parse_digest(body) or ""

    return dict(zip(sides, map_parallel(conn.jobs, read, sides), strict=True))


def _digest_problem(rel: str, digest: str | None, saved: dict[str, str]) -> str | None:
    """Why file `rel` (sha256 `digest`) does not match the digest stored beside it; None if it does or has none."""
    if rel not in saved or digest is None:
        return None
    side = rel.rsplit("/", 1)[-1] + DIGEST_SUFFIX
    if not saved[rel]:
        return f"{_NOT_AS_SAVED}{side} does not hold a sha256 line"
    if digest != saved[rel]:
        return f"{_NOT_AS_SAVED}sha256 {digest[:12]}..., {side} records {saved[rel][:12]}..."
    return None


def _read_record(dest: Path) -> dict[str, FileEntry]:
    """What earlier pulls wrote into `dest`; empty if there is no readable record."""
    path = dest / PULLED_NAME
    try:
        return parse_manifest(path.read_bytes(), str(path))
    except (OSError, StorageError):
        return {}


def _write_record(dest: Path, files: dict[str, FileEntry]) -> None:
    if files and files != _read_record(dest):
        write_atomic(dest / PULLED_NAME, lambda tmp: tmp.write_bytes(manifest_bytes(files)))
