"""Run directories to and from S3 and S3-compatible stores (MinIO, R2, ...): the public face.

    store = S3Store.connect(endpoint_url="http://localhost:9000")
    store.push("runs/ts", "s3://my-bucket/tfkit/ts")      # sync up, sha256 manifest last
    store.pull("s3://my-bucket/tfkit/ts", "runs/ts-copy")  # verified against the manifest and checkpoint digests
    store.list_runs("s3://my-bucket/tfkit/")               # one `RunListing` per run

`S3Store` is a connected store with every operation on it; the work is done next door:

- `tfkit.storage.uri`: `S3Uri` and `parse_s3_uri`;
- `tfkit.storage.client`: credentials (`load_dotenv`), connecting, and errors a user can
  fix (no credentials, missing bucket, access denied, unreachable or silent endpoint)
  as one-line `StorageError`s that never contain a secret;
- `tfkit.storage.timeouts`: silent and slow endpoints, and the retries they get;
- `tfkit.storage.transfers`: transfers in parallel and their progress (`TransferCallback`);
- `tfkit.storage.push`, `tfkit.storage.pull` (with the checks of local files and of
  digests), `tfkit.storage.listing` (objects, the manifest, `RunListing`).

boto3 is imported only when a store is connected. Progress goes to an optional
`TransferCallback` and retries to an optional `on_retry`; nothing prints.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

from tfkit.errors import StorageError
from tfkit.storage.client import (
    DEFAULT_JOBS,
    MAX_ATTEMPTS,
    MAX_TIMEOUT,
    MULTIPART_CHUNKSIZE,
    MULTIPART_THRESHOLD,
    NO_CREDENTIALS,
    Connection,
    load_dotenv,
)
from tfkit.storage.listing import RunListing, list_runs
from tfkit.storage.pull import PullResult, pull_directory
from tfkit.storage.push import PushResult, push_directory
from tfkit.storage.timeouts import MIN_RATE
from tfkit.storage.transfers import TransferCallback
from tfkit.storage.uri import S3Uri, as_s3_uri, parse_s3_uri

__all__ = [
    "DEFAULT_JOBS",
    "MAX_ATTEMPTS",
    "MAX_TIMEOUT",
    "MIN_RATE",
    "MULTIPART_CHUNKSIZE",
    "MULTIPART_THRESHOLD",
    "NO_CREDENTIALS",
    "PullResult",
    "PushResult",
    "RunListing",
    "S3Store",
    "S3Uri",
    "TransferCallback",
    "load_dotenv",
    "parse_s3_uri",
]


class S3Store(Connection):
    """A connected S3 client with tfkit's push / pull / list operations.

    Create with `S3Store.connect(...)` (`Connection.connect`); the instance is safe to use
    from several threads.
    """

    # (local_dir, uri, ...): upload what differs from the remote manifest (`tfkit.storage.push`)
    push = push_directory
    # (uri, dest, ...): download verified against the manifest, local changes kept (`tfkit.storage.pull`)
    pull = pull_directory

    def list_runs(self, uri: str | S3Uri) -> list[RunListing]:
        """One entry per folder directly under `uri` (and "." for files right at it); a `uri`
        that is itself a run is the single entry "." (`tfkit.storage.listing.list_runs`)."""
        return list_runs(self, as_s3_uri(uri))

    def has_objects(self, uri: str | S3Uri) -> bool:
        """Whether anything is stored under `uri` (checks the bucket and the credentials too)."""
        target = as_s3_uri(uri)
        with self.errors(target):
            page = self.client.list_objects_v2(Bucket=target.bucket, Prefix=target.prefix, MaxKeys=1)
        return bool(page.get("KeyCount") or page.get("Contents"))

    def read_small(self, uri: str | S3Uri, rel: str, limit: int = 4096) -> bytes | None:
        """The bytes of the object `rel` under `uri` (a pointer, a digest), None when there is none.

        At most `limit` bytes are read: an object larger than that is not a small one.
        """
        target = as_s3_uri(uri)
        from botocore import exceptions as bx

        with self.errors(target):
            try:
                body = self.client.get_object(Bucket=target.bucket, Key=target.key(rel))
            except bx.ClientError as e:
                if str(e.response.get("Error", {}).get("Code", "")) in ("NoSuchKey", "404"):
                    return None
                raise
            with contextlib.closing(body["Body"]) as stream:
                return stream.read(limit)

    def delete(self, uri: str | S3Uri, rels: Iterable[str]) -> list[str]:
        """Delete the objects `rels` under `uri` (one that is not there is no error); returns those deleted."""
        target = as_s3_uri(uri)
        rels = sorted(set(rels))
        with self.errors(target):
            for start in range(0, len(rels), 1000):  # the most one request may delete
                batch = rels[start : start + 1000]
                answer = self.client.delete_objects(
                    Bucket=target.bucket,
                    Delete={"Objects": [{"Key": target.key(rel)} for rel in batch], "Quiet": True},
                )
                failed = answer.get("Errors") or []
                if failed:
                    first = failed[0]
                    raise StorageError(
                        f"could not delete {target.url(first['Key'][len(target.prefix) :])}: "
                        f"{first.get('Code', '')} {first.get('Message', '')}".rstrip()
                    )
        return rels
