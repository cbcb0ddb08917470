"""A real S3-compatible server for the tests: moto's server mode on 127.0.0.1.

`s3_server` starts one moto server per test session; `s3_env` gives each test fake
credentials in a clean environment (no ~/.aws, no .env, no instance metadata) and
restores os.environ afterwards; `bucket` creates a fresh bucket. `FlakyProxy` sits
between boto3 and moto: it forwards every request and can answer chosen ones with an
injected error (a transient 500, a 403) or hold them until released, and it records
what it saw, so the tests exercise boto3's own retries and headers over HTTP.
`SilentServer` accepts connections and never answers (an endpoint that hangs);
`TrickleServer` answers, but a byte or a header line at a time (an endpoint that crawls).
"""

from __future__ import annotations

import contextlib
import http.client
import itertools
import logging
import os
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

ACCESS_KEY = "AKIATFKITTESTKEY0001"
SECRET_KEY = "tfkit-test-secret-Zq8Xv3Lm0Pw7Rt5Yb2"

_bucket_numbers = itertools.count()


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Fake credentials only in the environment; cwd is an empty folder (no .env). Yields cwd."""
    saved = dict(os.environ)
    for name in list(os.environ):
        if name.startswith("AWS_"):
            del os.environ[name]
    home = tmp_path / "home"
    home.mkdir()
    (home / "empty").write_text("")
    os.environ.update(
        HOME=str(home),
        AWS_CONFIG_FILE=str(home / "empty"),
        AWS_SHARED_CREDENTIALS_FILE=str(home / "empty"),
        AWS_EC2_METADATA_DISABLED="true",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_ACCESS_KEY_ID=ACCESS_KEY,
        AWS_SECRET_ACCESS_KEY=SECRET_KEY,
    )
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    try:
        yield cwd
    finally:
        os.environ.clear()
        os.environ.update(saved)


def admin_client(endpoint: str) -> Any:
    """A plain boto3 client for setting up and inspecting the bucket directly."""
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        config=Config(s3={"addressing_style": "path"}),
    )


@pytest.fixture
def s3(s3_server: str, s3_env: Path) -> Any:
    return admin_client(s3_server)


@pytest.fixture
def bucket(s3: Any) -> str:
    name = f"tfkit-test-{os.getpid()}-{next(_bucket_numbers)}"
    s3.create_bucket(Bucket=name)
    return name


def make_run(root: Path) -> Path:
    """A small run directory in the tfkit layout, plus names that stress the key checks."""
    root.mkdir(parents=True)
    (root / "checkpoints").mkdir()
    (root / "notes").mkdir()
    (root / "train_config.json").write_text('{"model": {"depth": 2}, "meta": {"tfkit_version": "0"}}\n')
    (root / "train_log.csv").write_text("step,train_loss\n10,1.25\n20,1.1\n")
    (root / "val_log.csv").write_text("step,val_loss\n20,1.2\n")
    (root / "summary.json").write_text('{"status": "completed"}\n')
    (root / "checkpoints" / "1024.pt").write_bytes(os.urandom(40_000))
    (root / "checkpoints" / "2048.pt").write_bytes(os.urandom(40_000))
    (root / "notes" / "a..b.txt").write_text("dots inside a name are fine\n")
    (root / "notes" / "empty.txt").write_bytes(b"")
    return root


def tree(root: Path) -> dict[str, bytes]:
    """Every file under root (relative POSIX path -> bytes), but the record pulls keep there."""
    from tfkit.storage.manifest import PULLED_NAME

    files = [p for p in sorted(root.rglob("*")) if p.is_file() and p.name != PULLED_NAME]
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in files}


def keys(s3: Any, bucket: str, prefix: str = "") -> list[str]:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return sorted(item["Key"] for page in pages for item in page.get("Contents", []))


@dataclass
class Fault:
    status: int
    code: str
    method: str | None
    path_contains: str | None
    times: int
    message: str


@dataclass
class Seen:
    method: str
    path: str
    status: int
    headers: dict[str, str]


_HOP = {"connection", "keep-alive", "proxy-connection", "te", "trailers", "transfer-encoding", "upgrade", "expect"}


class FlakyProxy:
    """An HTTP proxy in front of the moto server that can inject errors and hold requests."""

    def __init__(self, upstream: str) -> None:
        host, port = upstream.removeprefix("http://").split(":")
        self.upstream = (host, int(port))
        self.faults: list[Fault] = []
        self.seen: list[Seen] = []
        self.gate = threading.Event()
        self.gate.set()
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def fail(
        self,
        status: int,
        code: str,
        *,
        method: str | None = None,
        path_contains: str | None = None,
        times: int = 1,
        message: str = "injected by the test proxy",
    ) -> None:
        with self._lock:
            self.faults.append(Fault(status, code, method, path_contains, times, message))

    def requests(self, method: str | None = None, path_contains: str = "") -> list[Seen]:
        with self._lock:
            return [s for s in self.seen if (method is None or s.method == method) and path_contains in s.path]

    def close(self) -> None:
        self.gate.set()
        self.server.shutdown()
        self.server.server_close()

    def _take_fault(self, method: str, path: str) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if fault.times > 0 and fault.method in (None, method) and (fault.path_contains or "") in path:
                    fault.times -= 1
                    return fault
        return None

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    out = b""
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return out
                        out += self.rfile.read(size)
                        self.rfile.readline()
                length = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(length) if length else b""

            def _handle(self) -> None:
                body = self._body()
                proxy.gate.wait()
                headers = {k: v for k, v in self.headers.items()}
                fault = proxy._take_fault(self.command, self.path)
                if fault is not None:
                    status = fault.status
                    payload = (
                        f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{fault.code}</Code>'
                        f"<Message>{fault.message}</Message><RequestId>tfkit-test</RequestId></Error>"
                    ).encode()
                    reply = [("Content-Type", "application/xml")]
                else:
                    conn = http.client.HTTPConnection(*proxy.upstream, timeout=60)
                    forward = {k: v for k, v in headers.items() if k.lower() not in _HOP}
                    if "chunked" in headers.get("Transfer-Encoding", "").lower():
                        forward["Content-Length"] = str(len(body))
                    conn.request(self.command, self.path, body=body or None, headers=forward)
                    response = conn.getresponse()
                    status, payload = response.status, response.read()
                    reply = [(k, v) for k, v in response.getheaders() if k.lower() not in _HOP | {"date", "server"}]
                    conn.close()
                with proxy._lock:
                    proxy.seen.append(Seen(self.command, self.path, status, headers))
                self.send_response(status)
                for k, v in reply:
                    if k.lower() != "content-length" or self.command == "HEAD":
                        self.send_header(k, v)
                if self.command != "HEAD":
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                else:
                    if not any(k.lower() == "content-length" for k, _ in reply):
                        self.send_header("Content-Length", "0")
                    self.end_headers()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        return Handler


@pytest.fixture
def proxy(s3_server: str) -> Iterator[FlakyProxy]:
    p = FlakyProxy(s3_server)
    yield p
    p.close()


class SilentServer:
    """A TCP server on 127.0.0.1 that accepts every connection and never sends a byte."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0), backlog=64)
        self.sock.settimeout(0.05)
        self.accepted: list[socket.socket] = []  # held open until close(), so none is reset
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        host, port = self.sock.getsockname()[:2]
        return f"http://{host}:{port}"

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted.append(conn)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()
        for conn in self.accepted:
            conn.close()


@pytest.fixture
def silent_server() -> Iterator[SilentServer]:
    server = SilentServer()
    yield server
    server.close()


LISTING = (
    '<?xml version="1.0" encoding="UTF-8"?>\n'
    '<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>b</Name><Prefix>r/</Prefix>'
    "<KeyCount>1</KeyCount><MaxKeys>1000</MaxKeys><IsTruncated>false</IsTruncated><Contents><Key>r/big.bin</Key>"
    '<LastModified>2024-01-01T00:00:00.000Z</LastModified><ETag>"tfkit-test"</ETag><Size>{size}</Size>'
    "<StorageClass>STANDARD</StorageClass></Contents></ListBucketResult>"
)


class TrickleServer:
    """An HTTP server on 127.0.0.1 whose every answer crawls: a step every `every` seconds.

    `mode="body"`: `200` with `Content-Length: 100000000`, then one byte per step.
    `mode="headers"`: the status line, then one header line per step, never the blank line.
    `mode="object"`: a listing of `r/big.bin` (`size` bytes) and its HEAD come at once; a GET
    of the object sends its headers and then one byte of it per step (a pull's download).
    `requests` records each request line it read.
    """

    def __init__(self, mode: str, every: float = 0.5, size: int = 100_000_000) -> None:
        self.mode, self.every, self.size = mode, every, size
        self.requests: list[str] = []
        self.sock = socket.create_server(("127.0.0.1", 0), backlog=64)
        self.sock.settimeout(0.05)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._conns: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        host, port = self.sock.getsockname()[:2]
        return f"http://{host}:{port}"

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._conns.append(conn)
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _serve(self, conn: socket.socket) -> None:
        with conn, conn.makefile("rb") as f:
            try:
                while not self._stop.is_set():
                    line = f.readline().decode("latin-1").strip()
                    if not line:
                        return
                    self.requests.append(line)
                    while f.readline() not in (b"\r\n", b"\n", b""):  # the headers (GET/HEAD: no body)
                        pass
                    method, target = line.split()[:2]
                    if self.mode == "object" and "list-type=2" in target:
                        body = LISTING.format(size=self.size).encode()
                        conn.sendall(self._head(len(body), "application/xml") + body)
                    elif self.mode == "object" and method == "HEAD":
                        conn.sendall(self._head(self.size, "application/octet-stream"))
                    elif self.mode == "headers":
                        conn.sendall(b"HTTP/1.1 200 OK\r\n")
                        self._crawl(conn, (f"X-Step-{n}: {n}\r\n".encode() for n in itertools.count()))
                    else:
                        conn.sendall(self._head(self.size, "application/xml"))
                        self._crawl(conn, itertools.repeat(b"<"))
            except OSError:  # the client hung up
                return

    def _head(self, length: int, kind: str) -> bytes:
        return f"HTTP/1.1 200 OK\r\nContent-Type: {kind}\r\nContent-Length: {length}\r\n\r\n".encode()

    def _crawl(self, conn: socket.socket, steps: Iterator[bytes]) -> None:
        for step in steps:
            if self._stop.wait(self.every):
                return
            conn.sendall(step)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()
        for conn in self._conns:  # a server thread may still wait for the next request
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        for thread in self._threads:
            thread.join(timeout=5)


@pytest.fixture
def trickle_server(request: pytest.FixtureRequest) -> Iterator[TrickleServer]:
    mode = getattr(request, "param", "body")
    server = TrickleServer(mode, size=1_000_000 if mode == "object" else 100_000_000)
    yield server
    server.close()
