"""What a store holds: the objects under a prefix (`list_objects`, one `StoredObject` each),
the manifest a push left there (`read_manifest`), and the runs under a prefix
(`list_runs`, one `RunListing` each).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

from tfkit.errors import StorageError
from tfkit.storage.client import Connection
from tfkit.storage.manifest import MANIFEST_NAME, FileEntry, parse_manifest
from tfkit.storage.uri import S3Uri

_CHECKPOINT = re.compile(r"checkpoints/(\d+)\.(?:pt|safetensors)")


@dataclass(frozen=True)
class StoredObject:
    """One object as the listing shows it."""

    size: int
    etag: str
    last_modified: Any


@dataclass
class RunListing:
    name: str  # the folder under the listed prefix; "." for files directly under it
    uri: str
    files: int
    size: int
    latest_checkpoint: int | None  # tokens trained of the newest checkpoints/<tokens>.pt
    manifest: bool
    last_modified: str | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def list_objects(conn: Connection, uri: S3Uri) -> dict[str, StoredObject]:
    """Objects under the prefix, keyed by their path relative to it (folder markers left out)."""
    out = {}
    paginator = conn.client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=uri.bucket, Prefix=uri.prefix):
        for item in page.get("Contents", []):
            rel = item["Key"][len(uri.prefix) :]
            if rel and not rel.endswith("/"):
                out[rel] = StoredObject(item["Size"], item.get("ETag", "").strip('"'), item.get("LastModified"))
    return out


def read_manifest(
    conn: Connection, uri: S3Uri, remote: dict[str, StoredObject], strict: bool
) -> dict[str, FileEntry] | None:
    """The manifest under `uri`, None if there is none (or, unless `strict`, if it does not parse)."""
    if MANIFEST_NAME not in remote:
        return None
    body = conn.client.get_object(Bucket=uri.bucket, Key=uri.key(MANIFEST_NAME))["Body"].read()
    try:
        return parse_manifest(body, uri.url(MANIFEST_NAME))
    except StorageError:
        if strict:
            raise
        return None  # push writes a fresh one


def list_runs(conn: Connection, base: S3Uri) -> list[RunListing]:
    """One entry per folder directly under `base` (and "." for files right at it).

    A `base` that is itself a run (a manifest or `train_config.json` at its top) is
    listed as the single entry ".".
    """
    with conn.errors(base):
        remote = list_objects(conn, base)
    groups: dict[str, dict[str, StoredObject]] = {}
    if MANIFEST_NAME in remote or "train_config.json" in remote:
        groups["."] = remote
    else:
        for rel, obj in remote.items():
            head, sep, rest = rel.partition("/")
            name, inner = (head, rest) if sep else (".", rel)
            groups.setdefault(name, {})[inner] = obj
    return [_run_listing(base, name, groups[name]) for name in sorted(groups, key=lambda n: (n != ".", n))]


def _run_listing(base: S3Uri, name: str, objects: dict[str, StoredObject]) -> RunListing:
    """The entry of the run `name` under `base`, from its objects."""
    files = {rel: obj for rel, obj in objects.items() if rel.rsplit("/", 1)[-1] != MANIFEST_NAME}
    tokens = [int(m.group(1)) for rel in files if (m := _CHECKPOINT.fullmatch(rel))]
    stamps = [obj.last_modified for obj in objects.values() if obj.last_modified is not None]
    return RunListing(
        name=name,
        uri=str(base) if name == "." else str(base.child(name)),
        files=len(files),
        size=sum(obj.size for obj in files.values()),
        latest_checkpoint=max(tokens) if tokens else None,
        manifest=MANIFEST_NAME in objects,
        last_modified=max(stamps).isoformat(timespec="seconds") if stamps else None,
    )
