"""Where a run lives in a store: `S3Uri` (`s3://bucket/prefix`) and `parse_s3_uri`, which
checks one a user wrote."""

from __future__ import annotations

import re
from dataclasses import dataclass

from tfkit.errors import StorageError

_BUCKET = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{1,254}")


@dataclass(frozen=True)
class S3Uri:
    """`s3://bucket/prefix`; the prefix is empty or ends with `/` (it names a folder)."""

    bucket: str
    prefix: str = ""

    def key(self, rel: str) -> str:
        return self.prefix + rel

    def child(self, name: str) -> S3Uri:
        return S3Uri(self.bucket, f"{self.prefix}{name.strip('/')}/")

    def url(self, rel: str = "") -> str:
        return f"s3://{self.bucket}/{self.prefix}{rel}"

    def __str__(self) -> str:
        return self.url()


def parse_s3_uri(uri: str, what: str = "S3 URI") -> S3Uri:
    """Parse `s3://bucket[/prefix]`; raise `StorageError` naming `what` if it is not one."""
    text = str(uri).strip()
    if not text.startswith("s3://"):
        raise StorageError(f"{what} must look like s3://bucket/prefix, got {uri!r}")
    bucket, _, prefix = text[5:].partition("/")
    if not _BUCKET.fullmatch(bucket):
        raise StorageError(f"{what} has no valid bucket name: {uri!r}")
    prefix = "/".join(part for part in prefix.split("/") if part)
    return S3Uri(bucket, prefix + "/" if prefix else "")


def as_s3_uri(uri: str | S3Uri) -> S3Uri:
    """`uri` itself if it is an `S3Uri`, else parsed."""
    return uri if isinstance(uri, S3Uri) else parse_s3_uri(uri)
