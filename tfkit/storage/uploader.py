"""Pushing a run directory to S3 while it trains (`--s3-uri`, `--s3-every-checkpoint`).

The trainer asks for a push after each checkpoint with `push_soon()`, which returns at
once: one worker thread pushes in the background, and requests that arrive while it is
busy fold into one more push. `finish()` waits for that worker and then pushes the final
run directory, so the end of a run is always in the bucket when `train` returns.
Every push syncs against the manifest, so later pushes send only new or grown files.

Checkpoints the run prunes (`--keep-last`) are told to `forget`: after each push their
objects and `.sha256` digests are deleted from the bucket too, except a checkpoint that the
bucket's `checkpoints/latest` still names (it waits for a later push). Only what the run
itself pruned is deleted: checkpoints that are in the bucket and not in the run directory
for any other reason (a run resumed from part of a pulled copy) stay.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tfkit.digest import DIGEST_SUFFIX
from tfkit.errors import StorageError
from tfkit.storage.s3 import PushResult, S3Store, S3Uri, parse_s3_uri


class RunPusher:
    """Pushes one run directory to `<s3_uri>/<run name>/`."""

    def __init__(self, store: S3Store, run_dir: Path, uri: S3Uri) -> None:
        self.store = store
        self.run_dir = Path(run_dir)
        self.uri = uri
        self.background_pushes = 0
        self.background_errors: list[str] = []
        self._hashes: dict[str, Any] = {}  # shared by every push: unchanged files are hashed once
        self._forgotten: set[str] = set()  # checkpoints pruned from the run, still to delete from the bucket
        self.deleted: list[str] = []  # what was deleted from the bucket, relative to the run
        self._cond = threading.Condition()
        self._pending = False
        self._closed = False
        self._abandoned = False
        self._thread: threading.Thread | None = None

    @classmethod
    def open(cls, run_dir: str | Path, s3_uri: str, *, overwrite: bool = False, **connect: Any) -> RunPusher:
        """Connect and check the destination before training starts.

        Raises `StorageError` for bad credentials, a missing bucket or denied access, and
        when the destination already holds files (unless `overwrite`, as for the run
        directory itself). `connect` goes to `S3Store.connect`.
        """
        run_dir = Path(run_dir)
        uri = parse_s3_uri(s3_uri, "--s3-uri").child(run_dir.resolve().name)
        store = S3Store.connect(**connect)
        if store.has_objects(uri) and not overwrite:
            raise StorageError(f"{uri} already holds files; choose another --out or --s3-uri, or pass --overwrite")
        return cls(store, run_dir, uri)

    def forget(self, checkpoints: Iterable[Path]) -> None:
        """Checkpoints the run pruned: the next push deletes them (and their digests) from the bucket too."""
        with self._cond:
            self._forgotten.update(f"checkpoints/{Path(p).name}" for p in checkpoints)

    def push_soon(self) -> None:
        """Ask for a background push of the run directory as it is now; never blocks."""
        with self._cond:
            if self._closed:
                return
            self._pending = True
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name="tfkit-s3-push", daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def finish(self) -> dict[str, Any]:
        """Wait for background pushes, push the final run directory, and describe it.

        Raises `StorageError` if the final push fails (the run stays on disk).
        """
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join()
        try:
            result = self._push()
        except StorageError as e:
            where = f"the run is saved in {self.run_dir}, but pushing it to {self.uri}"
            raise StorageError(f"{where} failed: {e}") from None
        return {
            "uri": result.uri,
            "uploaded": len(result.uploaded),
            "unchanged": len(result.unchanged),
            "bytes_uploaded": result.bytes_uploaded,
            "deleted": len(self.deleted),
            "background_pushes": self.background_pushes,
            "background_errors": list(self.background_errors),
        }

    def abandon(self) -> None:
        """Stop without a final push (the run itself failed); a push in flight runs out on its own."""
        with self._cond:
            self._closed = True
            self._abandoned = True
            self._pending = False
            self._cond.notify_all()

    def _push(self) -> PushResult:
        result = self.store.push(self.run_dir, self.uri, mirror=True, hash_cache=self._hashes)
        self._delete_forgotten()
        return result

    def _delete_forgotten(self) -> None:
        """Delete the pruned checkpoints from the bucket, but the one its `latest` names and any back on disk."""
        with self._cond:
            pending = set(self._forgotten)
        if not pending:
            return
        pointer = self.store.read_small(self.uri, "checkpoints/latest")
        named = f"checkpoints/{pointer.decode('utf-8', errors='replace').strip()}" if pointer else None
        gone = {rel for rel in pending if rel != named and not (self.run_dir / rel).exists()}
        if gone:
            self.store.delete(self.uri, [key for rel in gone for key in (rel, rel + DIGEST_SUFFIX)])
        with self._cond:
            self._forgotten -= gone
            self.deleted += sorted(gone)

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if not self._pending or self._abandoned:
                    return
                self._pending = False
            try:
                self._push()
                self.background_pushes += 1
            except Exception as e:
                self.background_errors.append(str(e))
