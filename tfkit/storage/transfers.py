"""Transfers in parallel: boto3's managed transfers for one push or pull (`Transfers`), the
thread pool that runs one piece of work per file (`run_parallel`, `map_parallel`), and the
progress hooks a caller passes in (`TransferCallback`). boto3 is imported only when a
push or pull starts.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from typing import Any, TypeVar

from tfkit.storage.client import Connection

_T = TypeVar("_T")


class TransferCallback:
    """Progress hooks; every method is optional. `on_bytes` is called from worker threads."""

    def on_start(self, total_bytes: int, total_files: int) -> None: ...

    def on_bytes(self, count: int) -> None: ...

    def on_file(self, path: str, action: str) -> None: ...


class _Cancelled(Exception):
    """Ends a transfer at its next progress report, once another one failed or Ctrl-C was pressed."""


class Transfers:
    """boto3's managed transfers (parts, parallel parts, retried downloads) for one push or pull.

    Each `upload_fileobj` / `download_fileobj` call runs a transfer of its own. Files that go in
    parts take turns, each with `jobs` parts in flight, so a push of many checkpoints holds no
    more requests and part buffers than a push of one; smaller files go alongside. `cancel()`
    ends every transfer in flight at its next progress report (a multipart upload is aborted).
    """

    def __init__(self, client: Any, jobs: int, multipart_threshold: int, multipart_chunksize: int) -> None:
        from boto3.s3.transfer import TransferConfig

        self.client = client
        self.multipart_threshold = multipart_threshold
        self.config = TransferConfig(
            multipart_threshold=multipart_threshold,
            multipart_chunksize=multipart_chunksize,
            max_concurrency=jobs,
            preferred_transfer_client="classic",  # the one that sends its requests through this client
        )
        self.cancelled = threading.Event()
        self._in_parts = threading.Lock()

    def upload(self, fileobj: Any, size: int, bucket: str, key: str, on_bytes: Callable[[int], None]) -> None:
        with self._turn(size):
            self.client.upload_fileobj(fileobj, bucket, key, Callback=self._progress(on_bytes), Config=self.config)

    def download(self, bucket: str, key: str, fileobj: Any, size: int, on_bytes: Callable[[int], None]) -> None:
        with self._turn(size):
            self.client.download_fileobj(bucket, key, fileobj, Callback=self._progress(on_bytes), Config=self.config)

    def cancel(self) -> None:
        self.cancelled.set()

    @contextlib.contextmanager
    def _turn(self, size: int) -> Iterator[None]:
        with self._in_parts if size >= self.multipart_threshold else contextlib.nullcontext():
            if self.cancelled.is_set():
                raise _Cancelled
            yield

    def _progress(self, on_bytes: Callable[[int], None]) -> Callable[[int], None]:
        def report(count: int) -> None:
            if self.cancelled.is_set():
                raise _Cancelled
            on_bytes(count)

        return report


def run_parallel(conn: Connection, work: Callable[[Transfers, str], None], items: list[str]) -> None:
    """Run `work(transfers, item)` for every item on `conn.jobs` threads; the first error (or Ctrl-C)
    cancels the transfers in flight and skips the rest."""
    transfers = Transfers(conn.client, conn.jobs, conn.multipart_threshold, conn.multipart_chunksize)

    def guarded(item: str) -> None:
        if not transfers.cancelled.is_set():
            work(transfers, item)

    with ThreadPoolExecutor(conn.jobs, thread_name_prefix="tfkit-s3") as pool:
        futures: list[Future] = [pool.submit(guarded, item) for item in items]
        try:
            wait(futures, return_when=FIRST_EXCEPTION)
            for future in futures:
                if future.done() and future.exception() is not None:
                    raise future.exception()  # type: ignore[misc]
        except BaseException:
            transfers.cancel()
            for future in futures:
                future.cancel()
            raise


def map_parallel(jobs: int, work: Callable[[str], _T], items: list[str]) -> list[_T]:
    """`work(item)` for every item, on `jobs` threads, in the order of `items`."""
    with ThreadPoolExecutor(jobs, thread_name_prefix="tfkit-s3") as pool:
        return list(pool.map(work, items))
