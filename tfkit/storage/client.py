"""Connecting to a store: credentials, the endpoint, timeouts and retries, and errors.

`Connection.connect` resolves credentials from boto3's usual chain (environment, `~/.aws`,
a profile) plus the `AWS_*` variables of a `.env` file in the working directory
(`load_dotenv`, which never overrides variables already set), checks the endpoint and the
timeout, and builds a client in boto3's standard retry mode whose silent or slow answers
are bounded (`tfkit.storage.timeouts`). `Connection.errors` turns what a user can fix (no
credentials, missing bucket, access denied, unreachable or silent endpoint) into a
`StorageError` of one line that never contains a secret. boto3 is imported only when a
store is connected.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import re
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Self
from urllib.parse import urlsplit

from tfkit.errors import StorageError
from tfkit.storage import DEFAULT_TIMEOUT, TIMEOUT_ATTEMPTS
from tfkit.storage.timeouts import RetryWatch, TooSlow, paced_pools, too_slow
from tfkit.storage.uri import S3Uri

DEFAULT_JOBS = 8
MULTIPART_THRESHOLD = 16 * 1024 * 1024  # files above this go up and down in parts
MULTIPART_CHUNKSIZE = 16 * 1024 * 1024
MAX_ATTEMPTS = 5  # per request, in boto3's standard retry mode
MAX_TIMEOUT = 3600.0  # --timeout at most

NO_CREDENTIALS = (
    "no AWS credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
    "(in the environment or in ./.env), or pass --profile"
)

_REJECTED = ("InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken", "TokenRefreshRequired")


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


class Connection:
    """A boto3 S3 client with what every operation needs around it: the endpoint to name
    and the secrets to keep out of error lines, the timeout, and the transfer settings.

    Create with `connect(...)`; the instance is safe to use from several threads.
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
        self.endpoint_url = plain_endpoint(endpoint_url)
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
    ) -> Self:
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
        _check_timeout(timeout)
        if env_file is not None:
            load_dotenv(env_file)
        import boto3
        from botocore import exceptions as bx

        endpoint = _endpoint(endpoint_url)
        try:
            session = boto3.Session(profile_name=profile)
        except bx.ProfileNotFound:
            raise StorageError(f"AWS profile {profile!r} not found in the AWS config files") from None
        secrets = _secrets(session)
        client = _client(session, endpoint, jobs, max_attempts, timeout)
        # botocore has no public hook for the connections it makes; its session's pool classes
        # are the narrowest place to bound a whole answer (tests/faults/test_s3_faults.py
        # checks that a trickling endpoint still ends in time)
        client._endpoint.http_session._pool_classes_by_scheme.update(paced_pools())
        timeout_attempts = max(1, min(TIMEOUT_ATTEMPTS, max_attempts))
        watch = RetryWatch(plain_endpoint(client.meta.endpoint_url) or "", timeout, max_attempts, timeout_attempts)
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

    def redact(self, text: str) -> str:
        """`text` with this connection's secrets masked."""
        return redact(text, self._secrets)

    @contextlib.contextmanager
    def errors(self, uri: S3Uri) -> Iterator[None]:
        """Turn botocore errors a user can fix into one-line `StorageError`s."""
        from botocore import exceptions as bx
        from s3transfer.exceptions import RetriesExceededError  # boto3's managed downloads raise it as it is

        at = f" at {self.endpoint_url}" if self.endpoint_url else ""
        try:
            yield
        except StorageError as e:
            raise StorageError(self.redact(str(e))) from None
        except bx.ClientError as e:
            raise StorageError(self.redact(_client_error(e, uri, at))) from None
        except (bx.NoCredentialsError, bx.PartialCredentialsError):
            raise StorageError(NO_CREDENTIALS) from None
        except (bx.ReadTimeoutError, bx.ConnectTimeoutError) as e:
            raise StorageError(self._no_answer(too_slow(e))) from None
        except RetriesExceededError as e:
            if isinstance(e.last_exception, (bx.ReadTimeoutError, bx.ConnectTimeoutError, TimeoutError)):
                slow = too_slow(e)  # a body cut off by s3transfer's own retries, not counted here
                raise StorageError(self._no_answer(slow, counted=slow is None)) from None
            raise StorageError(self.redact(f"S3 transfer with {uri} failed{at}: {e}")) from None
        except bx.EndpointConnectionError as e:
            raise StorageError(self.redact(f"cannot reach the S3 endpoint{at}: {e}")) from None
        except bx.BotoCoreError as e:
            raise StorageError(self.redact(f"S3 transfer with {uri} failed{at}: {e}")) from None

    def _no_answer(self, slow: TooSlow | None = None, counted: bool = True) -> str:
        """The error line for a silent or too slow endpoint; `counted`: it was tried `timeout_attempts` times."""
        endpoint = self.endpoint_url or plain_endpoint(self.client.meta.endpoint_url)
        tries = f", tried {self.timeout_attempts} times" if counted and self.timeout_attempts > 1 else ""
        if slow is not None:
            what = f"{endpoint} answered too slowly ({slow})"
        else:
            what = f"no answer from {endpoint} within {self.timeout:g} s"
        return self.redact(f"{what}{tries}; check the endpoint and the network, or raise --timeout")


def _check_timeout(timeout: float) -> None:
    if not isinstance(timeout, (int, float)) or not math.isfinite(timeout) or not 0 < timeout <= MAX_TIMEOUT:
        limit = f"above 0 and at most {MAX_TIMEOUT:g}"
        raise StorageError(f"--timeout must be a number of seconds {limit}, got {timeout}")


def _endpoint(endpoint_url: str | None) -> str | None:
    """The endpoint to use: `endpoint_url`, else `AWS_ENDPOINT_URL_S3`, else `AWS_ENDPOINT_URL`; None for AWS."""
    endpoint = endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None
    if endpoint is not None:
        parts = urlsplit(endpoint)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            shown = plain_endpoint(endpoint)
            raise StorageError(f"the S3 endpoint URL must start with http:// or https://, got {shown!r}")
    return endpoint


def _secrets(session: Any) -> list[str]:
    """The secrets of the session's credentials (and of the environment), to keep out of error lines;
    raises `StorageError` if there are no credentials."""
    from botocore import exceptions as bx

    secrets = [os.environ.get(n, "") for n in ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN")]
    try:
        credentials = session.get_credentials()
        frozen = credentials.get_frozen_credentials() if credentials is not None else None
    except bx.BotoCoreError as e:
        raise StorageError(redact(f"could not load AWS credentials: {e}", secrets)) from None
    if frozen is None or not frozen.access_key or not frozen.secret_key:
        raise StorageError(NO_CREDENTIALS)
    return [*secrets, frozen.secret_key, frozen.token or ""]


def _client(session: Any, endpoint: str | None, jobs: int, max_attempts: int, timeout: float) -> Any:
    """The S3 client of `session`; a custom endpoint gets path-style addressing and checksums only where required."""
    from botocore.config import Config

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
        return session.client(
            "s3", endpoint_url=endpoint, region_name=region or "us-east-1", config=config.merge(custom)
        )
    client = session.client("s3", region_name=region, config=config)
    if not _is_aws(client.meta.endpoint_url):  # an endpoint_url from the AWS config file
        client = session.client("s3", region_name=region, config=config.merge(custom))
    return client


def _client_error(e: Any, uri: S3Uri, at: str) -> str:
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


def plain_endpoint(url: str | None) -> str | None:
    """The endpoint without any user:password part, fit to print."""
    if not url:
        return url
    return re.sub(r"//[^/@]*@", "//", url).rstrip("/")


def _is_aws(url: str | None) -> bool:
    host = urlsplit(url or "").hostname or ""
    return host.endswith((".amazonaws.com", ".amazonaws.com.cn")) or host == "amazonaws.com"


def redact(text: str, secrets: Iterable[str]) -> str:
    """`text` with every secret masked, and any `user:password@` of a URL left out."""
    text = re.sub(r"//[^/@\s\"']*@", "//", text)
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "****")
    return text
