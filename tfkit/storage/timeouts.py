"""Silent and slow endpoints: how long a request may take, and the retries it gets.

An endpoint that stays silent for `timeout` seconds (to connect or to answer) is tried
`TIMEOUT_ATTEMPTS` times in all, and so is one that answers too slowly as a whole: the
status line and headers must arrive within `timeout` seconds of the request, and the body
at `MIN_RATE` bytes/s on average after that much grace (`_Paced`, in the connection pools
of `paced_pools`), so a trickle of a byte or a header line at a time cannot hold a command
for ever. `RetryWatch` ends the retries of a silent request and reports every retry.
botocore is imported only inside the functions that use it.
"""

from __future__ import annotations

import functools
import io
import threading
import time
from collections.abc import Callable
from typing import Any

MIN_RATE = 8 * 1024  # bytes/s a body must average, after --timeout of grace (16 transfers at once: 1 Mbit/s)


class RetryWatch:
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
        slow = too_slow(caught_exception) if silent else None
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


class TooSlow(TimeoutError):
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
    point waits only until it and then raises `TooSlow`, a `TimeoutError`, which urllib3
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
            raise TooSlow(self.answered, self.timeout)
        shorter = left < self.timeout
        if shorter:
            self.sock.settimeout(left)
        try:
            count = self.raw.readinto(buffer)
        except TimeoutError:
            if shorter and self.received:  # nothing at all in time is a silent endpoint
                raise TooSlow(self.answered, self.timeout) from None
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
def paced_pools() -> dict[str, type]:
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


def too_slow(error: BaseException | None) -> TooSlow | None:
    """The `TooSlow` behind a botocore, urllib3 or s3transfer error, if that is what it was."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, TooSlow):
            return error
        seen.add(id(error))
        kwargs = getattr(error, "kwargs", None)
        inner = kwargs.get("error") if isinstance(kwargs, dict) else None
        error = getattr(error, "last_exception", None) or inner or error.__cause__ or error.__context__
    return None
