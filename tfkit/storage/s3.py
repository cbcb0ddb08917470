"""Run directories to and from S3 and S3-compatible stores (MinIO, R2, ...).

    store = S3Store.connect(endpoint_url="http://localhost:9000")
    store.push("runs/ts", "s3://my-bucket/tfkit/ts")      # sync up, sha256 manifest last
    store.pull("s3://my-bucket/tfkit/ts", "runs/ts-copy")  # verified against the manifest and checkpoint digests
    store.list_runs("s3://my-bucket/tfkit/")               # one `RunListing` per run

Credentials come from boto3's usual chain (environment, `~/.aws`, a profile) plus the
`AWS_*` variables of a `.env` file in the working directory, which never override
variables already set. Requests use boto3's standard retry mode; an endpoint that stays
silent for `timeout` seconds (to connect or to answer) is tried `TIMEOUT_ATTEMPTS` times
in all, and so is one that answers too slowly as a whole: the status line and headers must
arrive within `timeout` seconds of the request, and the body at `MIN_RATE` bytes/s on average
after that much grace (`_Paced`), so a trickle of a byte or a header line at a time cannot
hold a command for ever. Errors a user can fix (no credentials, missing bucket, access denied, unreachable
or silent endpoint, local files a pull would replace) raise `StorageError` with one line
that never contains a secret. boto3 is imported only when a store is connected. Progress
goes to an optional `TransferCallback` and retries to an optional `on_retry`; nothing prints.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import math
import os
import re
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tfkit.digest import DIGEST_SUFFIX, parse_digest
from tfkit.errors import StorageError
from tfkit.io import current_umask, write_atomic
from tfkit.storage import DEFAULT_TIMEOUT, TIMEOUT_ATTEMPTS
from tfkit.storage.manifest import (
    MANIFEST_NAME,
    PULLED_NAME,
    BoundedReader,
    FileEntry,
    local_path,
    manifest_bytes,
    never_pushed,
    parse_manifest,
    scan_directory,
    selected,
    sha256_file,
    sha256_of,
)

DEFAULT_JOBS = 8
MULTIPART_THRESHOLD = 16 * 1024 * 1024  # files above this go up and down in parts
MULTIPART_CHUNKSIZE = 16 * 1024 * 1024
MAX_ATTEMPTS = 5  # per request, in boto3's standard retry mode
MAX_TIMEOUT = 3600.0  # --timeout at most
MIN_RATE = 8 * 1024  # bytes/s a body must average, after --timeout of grace (16 transfers at once: 1 Mbit/s)

NO_CREDENTIALS = (
    "no AWS credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
    "(in the environment or in ./.env), or pass --profile"
)

_BUCKET = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{1,254}")
_CHECKPOINT = re.compile(r"checkpoints/(\d+)\.(?:pt|safetensors)")
_MD5 = re.compile(r"[0-9a-f]{32}")
_REJECTED = ("InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken", "TokenRefreshRequired")


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


def load_dotenv(path: str | Path = ".env") -> list[str]:
    """Set the `AWS_*` variables of a `.env` file that are not already set; return their names.

    The file is read by python-dotenv (`export`, quotes, `#` comments) without `${VAR}`
    expansion; other variables are left alone. A missing file is not an error, and a line
    that does not parse is skipped without a word.
    """
    import logging

    from dotenv import dotenv_values

    path = Path(path)
    if not path.is_file():
        return []
    parser = logging.getLogger("dotenv.main")  # it logs each line it cannot parse
    level = parser.level
    parser.setLevel(logging.ERROR)
    try:
        values = dotenv_values(stream=io.StringIO(path.read_text(errors="replace")), interpolate=False)
    finally:
        parser.setLevel(level)
    loaded = []
    for name, value in values.items():
        if name.startswith("AWS_") and value is not None and name not in os.environ:
            os.environ[name] = value
            loaded.append(name)
    return loaded


class TransferCallback:
    """Progress hooks; every method is optional. `on_bytes` is called from worker threads."""

    def on_start(self, total_bytes: int, total_files: int) -> None: ...

    def on_bytes(self, count: int) -> None: ...

    def on_file(self, path: str, action: str) -> None: ...


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


@dataclass(frozen=True)
class _Object:
    size: int
    etag: str
    last_modified: Any


class _Cancelled(Exception):
    """Ends a transfer at its next progress report, once another one failed or Ctrl-C was pressed."""


class _Transfers:
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


class _RetryWatch:
    """Reports each retry and stops retrying a silent endpoint, through botocore's events.

    `needs-retry` (this handler first in line) sees why an attempt failed: it notes the
    reason for the thread, and answers False, which ends the retries, once a request got
    no answer `timeout_attempts` times. `request-created` fires for every attempt: from
    the second one on, `on_retry` gets one line saying why and which attempt this is.
    """

    def __init__(self, endpoint: str, timeout: float, max_attempts: int, timeout_attempts: int) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self.max_attempts = max_attempts
        self.timeout_attempts = timeout_attempts
        self.on_retry: Callable[[str], None] | None = None
        self._local = threading.local()

    def register(self, events: Any) -> None:
        events.register_first("needs-retry.s3", self.needs_retry)
        events.register("request-created.s3", self.request_created)

    def needs_retry(self, attempts: int, response: Any = None, caught_exception: Any = None, **kwargs: Any) -> Any:
        from botocore import exceptions as bx

        silent = isinstance(caught_exception, (bx.ReadTimeoutError, bx.ConnectTimeoutError))
        slow = _too_slow(caught_exception) if silent else None
        if slow is not None:
            reason = f"{self.endpoint} answered too slowly ({slow})"
        elif silent:
            reason = f"no answer from {self.endpoint} within {self.timeout:g} s"
        elif isinstance(caught_exception, bx.EndpointConnectionError):
            reason = f"cannot connect to {self.endpoint}"
        elif caught_exception is not None:
            reason = type(caught_exception).__name__
        elif response is not None:
            http, parsed = response
            code = (parsed or {}).get("Error", {}).get("Code", "")
            reason = f"HTTP {http.status_code} {code}".rstrip()
        else:
            reason = "an error"
        self._local.reason, self._local.silent = reason, silent
        if silent and attempts >= self.timeout_attempts:
            return False
        return None

    def request_created(self, request: Any, **kwargs: Any) -> None:
        attempt = (getattr(request, "context", None) or {}).get("retries", {}).get("attempt", 1)
        if attempt > 1 and self.on_retry is not None:
            silent = getattr(self._local, "silent", False)
            limit = self.timeout_attempts if silent else self.max_attempts
            reason = getattr(self._local, "reason", "an error")
            self.on_retry(f"{reason}; retrying (attempt {attempt}/{limit})")


class _TooSlow(TimeoutError):
    """An answer that came too slowly as a whole, though every read got something in time."""

    def __init__(self, answered: bool, timeout: float) -> None:
        if answered:
            detail = f"its body came slower than {MIN_RATE // 1024} KiB/s"
        else:
            detail = f"its status and headers took over {timeout:g} s"
        super().__init__(detail)


class _Paced(io.RawIOBase):
    """The socket reads of one HTTP answer, bounded as a whole rather than one by one.

    The status line and headers must arrive within the read timeout of the request, and
    the body by `timeout + received / MIN_RATE` seconds. A read that would pass that
    point waits only until it and then raises `_TooSlow`, a `TimeoutError`, which urllib3
    and botocore report as a read timeout: the request is retried as a silent one is.
    """

    def __init__(self, raw: Any, sock: Any) -> None:
        self.raw, self.sock = raw, sock
        self.timeout = sock.gettimeout()  # the read timeout urllib3 just set
        self.start = time.monotonic()
        self.answered = False  # status line and headers read: the body is paced by MIN_RATE
        self.received = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int | None:
        if self.timeout is None:
            return self.raw.readinto(buffer)
        allowed = self.timeout + (self.received / MIN_RATE if self.answered else 0.0)
        left = self.start + allowed - time.monotonic()
        if left <= 0:
            raise _TooSlow(self.answered, self.timeout)
        shorter = left < self.timeout
        if shorter:
            self.sock.settimeout(left)
        try:
            count = self.raw.readinto(buffer)
        except TimeoutError:
            if shorter and self.received:  # nothing at all in time is a silent endpoint
                raise _TooSlow(self.answered, self.timeout) from None
            raise
        finally:
            if shorter:
                self.sock.settimeout(self.timeout)  # the next request's send waits as long as ever
        self.received += count or 0
        return count

    def close(self) -> None:
        if not self.closed:
            self.raw.close()
        super().close()


@functools.cache
def _paced_pools() -> dict[str, type]:
    """botocore's connection pools, whose connections read every answer through `_Paced`."""
    from botocore.awsrequest import (
        AWSHTTPConnection,
        AWSHTTPConnectionPool,
        AWSHTTPSConnection,
        AWSHTTPSConnectionPool,
    )

    class Pacing:
        def getresponse(self) -> Any:
            make = self.response_class  # http.client's, or botocore's after `Expect: 100-continue`
            reader: _Paced | None = None

            def paced(sock: Any, *args: Any, **kwargs: Any) -> Any:
                nonlocal reader
                response = make(sock, *args, **kwargs)
                reader = _Paced(response.fp.detach(), sock)
                response.fp = io.BufferedReader(reader)
                return response

            self.response_class = paced
            try:
                response = super().getresponse()  # reads the status line and headers
            finally:
                self.response_class = make
            if reader is not None:
                reader.answered = True
            return response

    class PacedHTTPConnection(Pacing, AWSHTTPConnection):
        pass

    class PacedHTTPSConnection(Pacing, AWSHTTPSConnection):
        pass

    class PacedHTTPConnectionPool(AWSHTTPConnectionPool):
        ConnectionCls = PacedHTTPConnection

    class PacedHTTPSConnectionPool(AWSHTTPSConnectionPool):
        ConnectionCls = PacedHTTPSConnection

    return {"http": PacedHTTPConnectionPool, "https": PacedHTTPSConnectionPool}


def _too_slow(error: BaseException | None) -> _TooSlow | None:
    """The `_TooSlow` behind a botocore, urllib3 or s3transfer error, if that is what it was."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, _TooSlow):
            return error
        seen.add(id(error))
        kwargs = getattr(error, "kwargs", None)
        inner = kwargs.get("error") if isinstance(kwargs, dict) else None
        error = getattr(error, "last_exception", None) or inner or error.__cause__ or error.__context__
    return None


def _plain_endpoint(url: str | None) -> str | None:
    """The endpoint without any user:password part, fit to print."""
    if not url:
        return url
    return re.sub(r"//[^/@]*@", "//", url).rstrip("/")


def _is_aws(url: str | None) -> bool:
    host = urlsplit(url or "").hostname or ""
    return host.endswith((".amazonaws.com", ".amazonaws.com.cn")) or host == "amazonaws.com"


class S3Store:
    """A connected S3 client with tfkit's push / pull / list operations.

    Create with `S3Store.connect(...)`; the instance is safe to use from several threads.
    """

    def __init__(
        self,
        client: Any,
        *,
        endpoint_url: str | None = None,
        secrets: Iterable[str] = (),
        jobs: int = DEFAULT_JOBS,
        multipart_threshold: int = MULTIPART_THRESHOLD,
        multipart_chunksize: int = MULTIPART_CHUNKSIZE,
        timeout: float = DEFAULT_TIMEOUT,
        timeout_attempts: int = TIMEOUT_ATTEMPTS,
    ) -> None:
        self.client = client
        self.endpoint_url = _plain_endpoint(endpoint_url)
        self.jobs = max(1, jobs)
        self.multipart_threshold = multipart_threshold
        self.multipart_chunksize = multipart_chunksize
        self.timeout = timeout
        self.timeout_attempts = timeout_attempts
        self._secrets = [s for s in secrets if s and len(s) >= 4]

    @classmethod
    def connect(
        cls,
        *,
        profile: str | None = None,
        endpoint_url: str | None = None,
        env_file: str | Path | None = ".env",
        jobs: int = DEFAULT_JOBS,
        multipart_threshold: int = MULTIPART_THRESHOLD,
        multipart_chunksize: int = MULTIPART_CHUNKSIZE,
        max_attempts: int = MAX_ATTEMPTS,
        timeout: float = DEFAULT_TIMEOUT,
        on_retry: Callable[[str], None] | None = None,
    ) -> S3Store:
        """Resolve credentials and build the client; nothing is sent yet.

        Args:
            profile: an AWS profile from `~/.aws/config` / `~/.aws/credentials`.
            endpoint_url: an S3-compatible endpoint; default `AWS_ENDPOINT_URL_S3`, then
                `AWS_ENDPOINT_URL`, then AWS itself. Custom endpoints get path-style
                addressing and checksums only where the operation requires them, which
                stores that do not implement recent AWS checksums need.
            env_file: a `.env` file whose `AWS_*` variables fill in unset ones (None: skip).
            jobs: files transferred at once (and parts per file in flight).
            timeout: seconds to wait for a connection and then for each answer; a request
                that gets none is tried `TIMEOUT_ATTEMPTS` times in all (other transient
                errors `max_attempts` times), then fails with "no answer from ...". An
                answer's headers must all come within it, and its body at `MIN_RATE` after
                that grace; one slower is retried alike ("... answered too slowly").
            on_retry: called with one line (why, which attempt) before every retry, from
                whichever thread makes the request.
        """
        if not isinstance(timeout, (int, float)) or not math.isfinite(timeout) or not 0 < timeout <= MAX_TIMEOUT:
            limit = f"above 0 and at most {MAX_TIMEOUT:g}"
            raise StorageError(f"--timeout must be a number of seconds {limit}, got {timeout}")
        if env_file is not None:
            load_dotenv(env_file)
        import boto3
        from botocore import exceptions as bx
        from botocore.config import Config

        endpoint = endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None
        if endpoint is not None:
            parts = urlsplit(endpoint)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                shown = _plain_endpoint(endpoint)
                raise StorageError(f"the S3 endpoint URL must start with http:// or https://, got {shown!r}")
        try:
            session = boto3.Session(profile_name=profile)
        except bx.ProfileNotFound:
            raise StorageError(f"AWS profile {profile!r} not found in the AWS config files") from None
        secrets = [os.environ.get(n, "") for n in ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN")]
        try:
            credentials = session.get_credentials()
            frozen = credentials.get_frozen_credentials() if credentials is not None else None
        except bx.BotoCoreError as e:
            raise StorageError(_redact(f"could not load AWS credentials: {e}", secrets)) from None
        if frozen is None or not frozen.access_key or not frozen.secret_key:
            raise StorageError(NO_CREDENTIALS)
        secrets += [frozen.secret_key, frozen.token or ""]

        config = Config(
            retries={"mode": "standard", "total_max_attempts": max_attempts},
            max_pool_connections=max(10, 2 * jobs),
            connect_timeout=timeout,
            read_timeout=timeout,
        )
        custom_options: dict[str, Any] = {"s3": {"addressing_style": "path"}}
        if "request_checksum_calculation" in Config.OPTION_DEFAULTS:  # botocore >= 1.36 checksums by default
            custom_options.update(
                request_checksum_calculation="when_required", response_checksum_validation="when_required"
            )
        custom = Config(**custom_options)
        region = session.region_name
        if endpoint is not None:
            client = session.client(
                "s3", endpoint_url=endpoint, region_name=region or "us-east-1", config=config.merge(custom)
            )
        else:
            client = session.client("s3", region_name=region, config=config)
            if not _is_aws(client.meta.endpoint_url):  # an endpoint_url from the AWS config file
                client = session.client("s3", region_name=region, config=config.merge(custom))
        # botocore has no public hook for the connections it makes; its session's pool classes
        # are the narrowest place to bound a whole answer (tests/faults/test_s3_faults.py
        # checks that a trickling endpoint still ends in time)
        client._endpoint.http_session._pool_classes_by_scheme.update(_paced_pools())
        timeout_attempts = max(1, min(TIMEOUT_ATTEMPTS, max_attempts))
        watch = _RetryWatch(_plain_endpoint(client.meta.endpoint_url) or "", timeout, max_attempts, timeout_attempts)
        watch.on_retry = on_retry
        watch.register(client.meta.events)
        return cls(
            client,
            endpoint_url=endpoint or (None if _is_aws(client.meta.endpoint_url) else client.meta.endpoint_url),
            secrets=secrets,
            jobs=jobs,
            multipart_threshold=multipart_threshold,
            multipart_chunksize=multipart_chunksize,
            timeout=timeout,
            timeout_attempts=timeout_attempts,
        )

    # ---------------------------------------------------------------- operations

    def push(
        self,
        local_dir: str | Path,
        uri: str | S3Uri,
        *,
        include: Iterable[str] = (),
        exclude: Iterable[str] = (),
        dry_run: bool = False,
        callback: TransferCallback | None = None,
        mirror: bool = False,
        hash_cache: dict[str, tuple[tuple[int, int, int], str]] | None = None,
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
        target = uri if isinstance(uri, S3Uri) else parse_s3_uri(uri)
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
        with self._errors(target):
            remote = self._list(target)
            old = self._read_manifest(target, remote, strict=False)
            sizes = {}
            for rel in rels:
                with contextlib.suppress(FileNotFoundError):
                    sizes[rel] = (root / rel).stat().st_size
            callback.on_start(sum(sizes.values()), len(sizes))
            lock = threading.Lock()
            entries: dict[str, FileEntry] = {}

            def push_one(transfers: _Transfers, rel: str) -> None:
                try:
                    f = open(root / rel, "rb")  # noqa: SIM115  (closed by the transfer below)
                except FileNotFoundError:  # removed since the scan (a temp file renamed away)
                    return
                except OSError as e:
                    raise StorageError(f"cannot read {root / rel}: {e.strerror or e}") from None
                with f:
                    st = os.fstat(f.fileno())
                    stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
                    cached = hash_cache.get(rel) if hash_cache is not None else None
                    digest = cached[1] if cached and cached[0] == stamp else sha256_of(f, st.st_size)
                    if hash_cache is not None:
                        with lock:
                            hash_cache[rel] = (stamp, digest)
                    entry = FileEntry(st.st_size, digest)
                    obj = remote.get(rel)
                    same = old is not None and old.get(rel) == entry and obj is not None and obj.size == entry.size
                    if not same and not dry_run:
                        reader = BoundedReader(f, entry.size)
                        transfers.upload(reader, entry.size, target.bucket, target.key(rel), callback.on_bytes)
                    elif entry.size:
                        callback.on_bytes(entry.size)
                with lock:
                    entries[rel] = entry
                    if same:
                        result.unchanged.append(rel)
                    else:
                        result.uploaded.append(rel)
                        result.bytes_uploaded += entry.size
                action = "unchanged" if same else ("would upload" if dry_run else "uploaded")
                callback.on_file(rel, action)

            self._run_parallel(push_one, list(sizes))
            result.uploaded.sort()
            result.unchanged.sort()

            files: dict[str, FileEntry] = {}
            if old is not None and not mirror:
                still_there = {rel for rel, obj in remote.items() if rel in old and obj.size == old[rel].size}
                files = {rel: e for rel, e in old.items() if rel in still_there and not never_pushed(rel)}
            files.update(entries)
            if not dry_run and (result.uploaded or files != old):
                self.client.put_object(
                    Bucket=target.bucket,
                    Key=target.key(MANIFEST_NAME),
                    Body=manifest_bytes(files),
                    ContentType="application/json",
                )
                result.manifest_uploaded = True
        return result

    def pull(
        self,
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
        source = uri if isinstance(uri, S3Uri) else parse_s3_uri(uri)
        dest = Path(dest)
        if dest.exists() and not dest.is_dir():
            raise StorageError(f"{dest} exists and is not a directory")
        include, exclude = list(include), list(exclude)
        callback = callback or TransferCallback()
        result = PullResult(uri=str(source), dest=str(dest), dry_run=dry_run)
        with self._errors(source):
            remote = self._list(source)
            if not remote:
                raise StorageError(f"nothing found at {source}")
            manifest = self._read_manifest(source, remote, strict=True)
            result.verified = manifest is not None
            wanted: dict[str, tuple[int, FileEntry | None]] = {}
            if manifest is not None:
                for rel, entry in manifest.items():
                    if selected(rel, include, exclude) and rel != PULLED_NAME:
                        if rel not in remote:
                            raise StorageError(f"the manifest lists {source.url(rel)}, but the object is missing")
                        wanted[rel] = (entry.size, entry)
                extra = [rel for rel in remote if rel != MANIFEST_NAME and rel not in manifest]
                result.unlisted = sorted(rel for rel in extra if selected(rel, include, exclude))
            else:
                for rel, obj in remote.items():
                    if rel not in (MANIFEST_NAME, PULLED_NAME) and selected(rel, include, exclude):
                        wanted[rel] = (obj.size, None)
            if not wanted:
                raise StorageError(f"no files at {source} match --include/--exclude")
            targets: dict[str, Path] = {}
            seen: dict[Path, str] = {}
            for rel in sorted(wanted):
                path = local_path(dest, rel, source.url(rel))
                if path in seen:
                    both = f"{source.url(rel)} and {source.url(seen[path])}"
                    raise StorageError(f"{both} would both be written to {path}")
                seen[path] = rel
                targets[rel] = path

            # every local file is looked at before anything is written
            record = _read_record(dest)

            def look(rel: str) -> tuple[str, str | None]:
                size, entry = wanted[rel]
                return self._local_state(targets[rel], size, entry, remote[rel], record.get(rel))

            with ThreadPoolExecutor(self.jobs, thread_name_prefix="tfkit-s3") as pool:
                states = dict(zip(sorted(wanted), pool.map(look, sorted(wanted)), strict=True))
            changed = [rel for rel, (state, _) in states.items() if state == "changed"]
            if changed and not force:
                shown = ", ".join(changed[:10]) + (f" and {len(changed) - 10} more" if len(changed) > 10 else "")
                raise StorageError(
                    f"{len(changed)} file(s) in {dest} differ from {source} and are not what an earlier pull "
                    f"wrote (changed locally?): {shown}; nothing was pulled; pass --force to replace them"
                )
            result.overwritten = changed
            saved = {} if dry_run else self._saved_digests(source, remote, sorted(wanted))

            callback.on_start(sum(size for size, _ in wanted.values()), len(wanted))
            lock = threading.Lock()
            bad: list[str] = []
            corrupt: list[str] = []  # what does not match the digest saved with it
            pulled: dict[str, FileEntry] = {}  # what is now on disk as the remote has it

            def pull_one(transfers: _Transfers, rel: str) -> None:
                size, entry = wanted[rel]
                state, digest = states[rel]
                if state == "identical":
                    callback.on_bytes(size)
                    problem = _digest_problem(rel, digest, saved)
                    with lock:
                        result.unchanged.append(rel)
                        pulled[rel] = FileEntry(size, digest or "")
                        if problem:
                            corrupt.append(f"{rel} ({problem}; the copy in {dest} is the same)")
                    callback.on_file(rel, "corrupt" if problem else "unchanged")
                    return
                if dry_run:
                    callback.on_bytes(size)
                    with lock:
                        result.downloaded.append(rel)
                        result.bytes_downloaded += size
                    callback.on_file(rel, "would download")
                    return
                problem, digest = self._download(transfers, source, rel, targets[rel], size, entry, callback, saved)
                with lock:
                    if problem and problem.startswith(_NOT_AS_SAVED):
                        corrupt.append(f"{rel} ({problem})")
                    elif problem:
                        bad.append(f"{rel} ({problem})")
                    else:
                        result.downloaded.append(rel)
                        result.bytes_downloaded += size
                        pulled[rel] = FileEntry(size, digest)
                callback.on_file(rel, "corrupt" if problem else "downloaded")

            try:
                self._run_parallel(pull_one, sorted(wanted))
            except BaseException:
                if not dry_run:
                    with contextlib.suppress(OSError):  # the error in flight says more
                        _write_record(dest, {**record, **pulled})
                raise
            if not dry_run:
                try:
                    _write_record(dest, {**record, **pulled})
                except OSError as e:
                    raise StorageError(f"cannot write {dest / PULLED_NAME}: {e.strerror or e}") from None
            result.downloaded.sort()
            result.unchanged.sort()
            problems = []
            if bad:
                what = "the manifest" if manifest is not None else "the listing"
                problems.append(
                    f"{len(bad)} file(s) from {source} did not match {what} and were not written: "
                    + "; ".join(sorted(bad))
                )
            if corrupt:
                problems.append(
                    f"{len(corrupt)} checkpoint(s) from {source} are corrupt (their bytes changed after they were "
                    "saved, before the push) and were not written: " + "; ".join(sorted(corrupt))
                )
            if problems:
                raise StorageError("; ".join(problems))
        return result

    def list_runs(self, uri: str | S3Uri) -> list[RunListing]:
        """One entry per folder directly under `uri` (and "." for files right at it).

        A `uri` that is itself a run (a manifest or `train_config.json` at its top) is
        listed as the single entry ".".
        """
        base = uri if isinstance(uri, S3Uri) else parse_s3_uri(uri)
        with self._errors(base):
            remote = self._list(base)
        groups: dict[str, dict[str, _Object]] = {}
        if MANIFEST_NAME in remote or "train_config.json" in remote:
            groups["."] = remote
        else:
            for rel, obj in remote.items():
                head, sep, rest = rel.partition("/")
                name, inner = (head, rest) if sep else (".", rel)
                groups.setdefault(name, {})[inner] = obj
        runs = []
        for name in sorted(groups, key=lambda n: (n != ".", n)):
            objects = groups[name]
            files = {rel: obj for rel, obj in objects.items() if rel.rsplit("/", 1)[-1] != MANIFEST_NAME}
            tokens = [int(m.group(1)) for rel in files if (m := _CHECKPOINT.fullmatch(rel))]
            stamps = [obj.last_modified for obj in objects.values() if obj.last_modified is not None]
            runs.append(
                RunListing(
                    name=name,
                    uri=str(base) if name == "." else str(base.child(name)),
                    files=len(files),
                    size=sum(obj.size for obj in files.values()),
                    latest_checkpoint=max(tokens) if tokens else None,
                    manifest=MANIFEST_NAME in objects,
                    last_modified=max(stamps).isoformat(timespec="seconds") if stamps else None,
                )
            )
        return runs

    def has_objects(self, uri: str | S3Uri) -> bool:
        """Whether anything is stored under `uri` (checks the bucket and the credentials too)."""
        target = uri if isinstance(uri, S3Uri) else parse_s3_uri(uri)
        with self._errors(target):
            page = self.client.list_objects_v2(Bucket=target.bucket, Prefix=target.prefix, MaxKeys=1)
        return bool(page.get("KeyCount") or page.get("Contents"))

    def read_small(self, uri: str | S3Uri, rel: str, limit: int = 4096) -> bytes | None:
        """The bytes of the object `rel` under `uri` (a pointer, a digest), None when there is none.

        At most `limit` bytes are read: an object larger than that is not a small one.
        """
        target = uri if isinstance(uri, S3Uri) else parse_s3_uri(uri)
        from botocore import exceptions as bx

        with self._errors(target):
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
        target = uri if isinstance(uri, S3Uri) else parse_s3_uri(uri)
        rels = sorted(set(rels))
        with self._errors(target):
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

    # ---------------------------------------------------------------- internals

    def _list(self, uri: S3Uri) -> dict[str, _Object]:
        """Objects under the prefix, keyed by their path relative to it (folder markers left out)."""
        out = {}
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=uri.bucket, Prefix=uri.prefix):
            for item in page.get("Contents", []):
                rel = item["Key"][len(uri.prefix) :]
                if rel and not rel.endswith("/"):
                    out[rel] = _Object(item["Size"], item.get("ETag", "").strip('"'), item.get("LastModified"))
        return out

    def _saved_digests(self, uri: S3Uri, remote: dict[str, _Object], rels: list[str]) -> dict[str, str]:
        """The digest each of `rels` has beside it in the store (`<rel>.sha256`): "" where that is not one."""
        sides = [rel for rel in rels if rel + DIGEST_SUFFIX in remote]

        def read(rel: str) -> str:
            side = rel + DIGEST_SUFFIX
            if remote[side].size > 4096:  # one sha256sum line
                return ""
            body = self.client.get_object(Bucket=uri.bucket, Key=uri.key(side))["Body"].read()
            return parse_digest(body) or ""

        with ThreadPoolExecutor(self.jobs, thread_name_prefix="tfkit-s3") as pool:
            return dict(zip(sides, pool.map(read, sides), strict=True))

    def _read_manifest(self, uri: S3Uri, remote: dict[str, _Object], strict: bool) -> dict[str, FileEntry] | None:
        if MANIFEST_NAME not in remote:
            return None
        body = self.client.get_object(Bucket=uri.bucket, Key=uri.key(MANIFEST_NAME))["Body"].read()
        try:
            return parse_manifest(body, uri.url(MANIFEST_NAME))
        except StorageError:
            if strict:
                raise
            return None  # push writes a fresh one

    def _run_parallel(self, work: Callable[[_Transfers, str], None], items: list[str]) -> None:
        """Run `work(transfers, item)` for every item on `jobs` threads; the first error (or Ctrl-C)
        cancels the transfers in flight and skips the rest."""
        transfers = _Transfers(self.client, self.jobs, self.multipart_threshold, self.multipart_chunksize)

        def guarded(item: str) -> None:
            if not transfers.cancelled.is_set():
                work(transfers, item)

        with ThreadPoolExecutor(self.jobs, thread_name_prefix="tfkit-s3") as pool:
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

    def _local_state(
        self, path: Path, size: int, entry: FileEntry | None, obj: _Object, recorded: FileEntry | None
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

    def _download(
        self,
        transfers: _Transfers,
        source: S3Uri,
        rel: str,
        path: Path,
        size: int,
        entry: FileEntry | None,
        callback: TransferCallback,
        saved: dict[str, str],
    ) -> tuple[str | None, str]:
        """Download one object through a temp file; rename it into place if it verifies.

        It verifies when it matches its manifest `entry` (or listed `size`) and the digest
        `saved` beside it, if any.

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
                transfers.download(source.bucket, source.key(rel), f, size, callback.on_bytes)
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
            problem = _digest_problem(rel, digest, saved)
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

    def _redact(self, text: str) -> str:
        return _redact(text, self._secrets)

    @contextlib.contextmanager
    def _errors(self, uri: S3Uri) -> Iterator[None]:
        """Turn botocore errors a user can fix into one-line `StorageError`s."""
        from botocore import exceptions as bx
        from s3transfer.exceptions import RetriesExceededError  # boto3's managed downloads raise it as it is

        at = f" at {self.endpoint_url}" if self.endpoint_url else ""
        try:
            yield
        except StorageError as e:
            raise StorageError(self._redact(str(e))) from None
        except bx.ClientError as e:
            raise StorageError(self._redact(self._client_error(e, uri, at))) from None
        except (bx.NoCredentialsError, bx.PartialCredentialsError):
            raise StorageError(NO_CREDENTIALS) from None
        except (bx.ReadTimeoutError, bx.ConnectTimeoutError) as e:
            raise StorageError(self._no_answer(_too_slow(e))) from None
        except RetriesExceededError as e:
            if isinstance(e.last_exception, (bx.ReadTimeoutError, bx.ConnectTimeoutError, TimeoutError)):
                slow = _too_slow(e)  # a body cut off by s3transfer's own retries, not counted here
                raise StorageError(self._no_answer(slow, counted=slow is None)) from None
            raise StorageError(self._redact(f"S3 transfer with {uri} failed{at}: {e}")) from None
        except bx.EndpointConnectionError as e:
            raise StorageError(self._redact(f"cannot reach the S3 endpoint{at}: {e}")) from None
        except bx.BotoCoreError as e:
            raise StorageError(self._redact(f"S3 transfer with {uri} failed{at}: {e}")) from None

    def _no_answer(self, slow: _TooSlow | None = None, counted: bool = True) -> str:
        """The error line for a silent or too slow endpoint; `counted`: it was tried `timeout_attempts` times."""
        endpoint = self.endpoint_url or _plain_endpoint(self.client.meta.endpoint_url)
        tries = f", tried {self.timeout_attempts} times" if counted and self.timeout_attempts > 1 else ""
        if slow is not None:
            what = f"{endpoint} answered too slowly ({slow})"
        else:
            what = f"no answer from {endpoint} within {self.timeout:g} s"
        return self._redact(f"{what}{tries}; check the endpoint and the network, or raise --timeout")

    def _client_error(self, e: Any, uri: S3Uri, at: str) -> str:
        error = e.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        operation = getattr(e, "operation_name", "request")
        if code == "NoSuchBucket" or (code in ("404", "NotFound") and operation == "HeadBucket"):
            return f"bucket {uri.bucket!r} does not exist{at}"
        if code in _REJECTED:
            return (
                f"the S3 credentials were rejected{at} ({code}); check AWS_ACCESS_KEY_ID / "
                "AWS_SECRET_ACCESS_KEY, ./.env or --profile"
            )
        if code in ("AccessDenied", "AllAccessDisabled", "403") or status == 403:
            return f"access denied to {uri}{at} ({operation}); check the permissions of these credentials"
        if code in ("NoSuchKey", "404") or status == 404:
            return f"not found under {uri}{at} ({operation})"
        message = error.get("Message") or ""
        return f"S3 {operation} on {uri} failed{at}: {code or status} {message}".rstrip()


_NOT_AS_SAVED = "not as saved: "


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


def _redact(text: str, secrets: Iterable[str]) -> str:
    """`text` with every secret masked, and any `user:password@` of a URL left out."""
    text = re.sub(r"//[^/@\s\"']*@", "//", text)
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "****")
    return text
