"""S3Store against a real S3-compatible server (moto, on 127.0.0.1) with the real boto3 client."""

from __future__ import annotations

import json
import os

import pytest

from tests.storage.s3_fixtures import keys, make_run, tree
from tfkit.errors import StorageError
from tfkit.storage.manifest import MANIFEST_NAME
from tfkit.storage.s3 import S3Store, TransferCallback


def connect(endpoint: str, **kw) -> S3Store:
    return S3Store.connect(endpoint_url=endpoint, **kw)


class Recorder(TransferCallback):
    def __init__(self) -> None:
        self.total = 0
        self.bytes = 0
        self.files: list[tuple[str, str]] = []

    def on_start(self, total_bytes: int, total_files: int) -> None:
        self.total = total_bytes

    def on_bytes(self, count: int) -> None:
        self.bytes += count

    def on_file(self, path: str, action: str) -> None:
        self.files.append((path, action))


def test_push_writes_files_and_a_manifest_then_syncs(tmp_path, s3_server, s3, bucket):
    run = make_run(tmp_path / "run")
    store = connect(s3_server)
    uri = f"s3://{bucket}/tfkit/run"
    progress = Recorder()
    first = store.push(run, uri, callback=progress)
    assert first.uploaded == sorted(tree(run)) and first.unchanged == [] and first.manifest_uploaded
    assert progress.bytes == progress.total == sum(len(b) for b in tree(run).values())
    assert keys(s3, bucket) == sorted([f"tfkit/run/{rel}" for rel in tree(run)] + [f"tfkit/run/{MANIFEST_NAME}"])
    manifest = json.loads(s3.get_object(Bucket=bucket, Key=f"tfkit/run/{MANIFEST_NAME}")["Body"].read())
    assert manifest["files"]["checkpoints/1024.pt"]["size"] == 40_000
    assert len(manifest["files"]) == len(tree(run))

    second = store.push(run, uri)
    assert second.uploaded == [] and not second.manifest_uploaded
    assert second.unchanged == first.uploaded

    with open(run / "train_log.csv", "a") as f:
        f.write("30,1.0\n")
    (run / "checkpoints" / "3072.pt").write_bytes(os.urandom(1000))
    third = store.push(run, uri)
    assert third.uploaded == ["checkpoints/3072.pt", "train_log.csv"] and third.manifest_uploaded
    body = s3.get_object(Bucket=bucket, Key="tfkit/run/train_log.csv")["Body"].read()
    assert body == (run / "train_log.csv").read_bytes()


def test_manifest_is_uploaded_last(tmp_path, proxy, s3, bucket):
    run = make_run(tmp_path / "run")
    connect(proxy.url).push(run, f"s3://{bucket}/r")
    puts = [s.path for s in proxy.requests("PUT") if s.status == 200]
    assert puts[-1].startswith(f"/{bucket}/r/{MANIFEST_NAME}")
    assert len(puts) == len(tree(run)) + 1


def test_partial_push_keeps_earlier_manifest_entries(tmp_path, s3_server, s3, bucket):
    run = make_run(tmp_path / "run")
    store = connect(s3_server)
    store.push(run, f"s3://{bucket}/r", include=["*.csv"])
    assert keys(s3, bucket) == [f"r/{MANIFEST_NAME}", "r/train_log.csv", "r/val_log.csv"]
    store.push(run, f"s3://{bucket}/r", exclude=["*.csv"])
    manifest = json.loads(s3.get_object(Bucket=bucket, Key=f"r/{MANIFEST_NAME}")["Body"].read())
    assert sorted(manifest["files"]) == sorted(tree(run))


def test_dry_run_uploads_nothing(tmp_path, s3_server, s3, bucket):
    run = make_run(tmp_path / "run")
    result = connect(s3_server).push(run, f"s3://{bucket}/r", dry_run=True)
    assert result.uploaded == sorted(tree(run)) and result.dry_run and not result.manifest_uploaded
    assert keys(s3, bucket) == []


def test_pull_round_trips_byte_for_byte_and_skips_identical_files(tmp_path, s3_server, bucket):
    run = make_run(tmp_path / "run")
    store = connect(s3_server)
    store.push(run, f"s3://{bucket}/r")
    dest = tmp_path / "copy"
    result = store.pull(f"s3://{bucket}/r", dest)
    assert result.verified and result.downloaded == sorted(tree(run))
    assert tree(dest) == tree(run)
    again = store.pull(f"s3://{bucket}/r", dest)
    assert again.downloaded == [] and again.unchanged == sorted(tree(run))
    (dest / "summary.json").write_text("locally edited\n")
    with pytest.raises(StorageError, match="summary.json"):  # a local edit is not replaced...
        store.pull(f"s3://{bucket}/r", dest)
    third = store.pull(f"s3://{bucket}/r", dest, force=True)  # ...unless forced
    assert third.downloaded == ["summary.json"] and third.overwritten == ["summary.json"]
    assert tree(dest) == tree(run)


def test_pull_with_globs(tmp_path, s3_server, bucket):
    run = make_run(tmp_path / "run")
    store = connect(s3_server)
    store.push(run, f"s3://{bucket}/r")
    dest = tmp_path / "copy"
    store.pull(f"s3://{bucket}/r", dest, include=["*.csv", "train_config.json"])
    assert sorted(tree(dest)) == ["train_config.json", "train_log.csv", "val_log.csv"]


def test_a_corrupted_object_is_caught_and_not_written(tmp_path, s3_server, s3, bucket):
    run = make_run(tmp_path / "run")
    store = connect(s3_server)
    store.push(run, f"s3://{bucket}/r")
    good = (run / "checkpoints" / "1024.pt").read_bytes()
    bad = bytes([good[0] ^ 0xFF]) + good[1:]  # same size, one byte flipped
    s3.put_object(Bucket=bucket, Key="r/checkpoints/1024.pt", Body=bad)

    dest = tmp_path / "copy"
    with pytest.raises(StorageError, match=r"did not match the manifest.*checkpoints/1024\.pt"):
        store.pull(f"s3://{bucket}/r", dest)
    assert not (dest / "checkpoints" / "1024.pt").exists()
    assert (dest / "checkpoints" / "2048.pt").read_bytes() == (run / "checkpoints" / "2048.pt").read_bytes()
    assert not [p for p in dest.rglob("*") if p.name.endswith(".tmp")]

    # an older local copy is never replaced by the bad download
    (dest / "checkpoints" / "1024.pt").write_bytes(b"older local copy")
    with pytest.raises(StorageError, match="1024.pt"):
        store.pull(f"s3://{bucket}/r", dest)
    assert (dest / "checkpoints" / "1024.pt").read_bytes() == b"older local copy"


def test_a_failed_download_leaves_no_partial_file(tmp_path, proxy, bucket):
    run = make_run(tmp_path / "run")
    connect(proxy.url).push(run, f"s3://{bucket}/r")
    proxy.fail(500, "InternalError", method="GET", path_contains="/checkpoints/1024.pt", times=99)
    dest = tmp_path / "copy"
    with pytest.raises(StorageError, match="InternalError"):
        connect(proxy.url, max_attempts=2).pull(f"s3://{bucket}/r", dest)
    assert not (dest / "checkpoints" / "1024.pt").exists()
    assert not [p for p in dest.rglob("*") if p.name.endswith(".tmp")]


def test_traversal_keys_are_refused_and_named(tmp_path, s3_server, s3, bucket):
    s3.put_object(Bucket=bucket, Key="r/notes/a..b.txt", Body=b"fine")
    s3.put_object(Bucket=bucket, Key="r/../evil.txt", Body=b"evil")
    dest = tmp_path / "copy"
    store = connect(s3_server)
    with pytest.raises(StorageError, match=r"refusing 's3://.*/r/\.\./evil\.txt'"):
        store.pull(f"s3://{bucket}/r", dest)
    assert not (tmp_path / "evil.txt").exists() and not dest.exists()
    s3.delete_object(Bucket=bucket, Key="r/../evil.txt")
    s3.put_object(Bucket=bucket, Key="r//etc/passwd", Body=b"evil")
    with pytest.raises(StorageError, match="absolute path"):
        store.pull(f"s3://{bucket}/r", dest)
    result = store.pull(f"s3://{bucket}/r", dest, exclude=["/etc/*"])
    assert result.downloaded == ["notes/a..b.txt"] and not result.verified
    assert (dest / "notes" / "a..b.txt").read_bytes() == b"fine"


def test_a_manifest_entry_that_escapes_is_refused(tmp_path, s3_server, s3, bucket):
    run = make_run(tmp_path / "run")
    store = connect(s3_server)
    store.push(run, f"s3://{bucket}/r")
    manifest = json.loads(s3.get_object(Bucket=bucket, Key=f"r/{MANIFEST_NAME}")["Body"].read())
    manifest["files"]["../../escape.txt"] = {"size": 4, "sha256": "0" * 64}
    s3.put_object(Bucket=bucket, Key=f"r/{MANIFEST_NAME}", Body=json.dumps(manifest).encode())
    s3.put_object(Bucket=bucket, Key="r/../../escape.txt", Body=b"evil")
    with pytest.raises(StorageError, match="refusing"):
        store.pull(f"s3://{bucket}/r", tmp_path / "copy")
    assert not (tmp_path / "escape.txt").exists()


def test_large_files_go_in_parts(tmp_path, s3_server, s3, bucket):
    big = tmp_path / "big"
    big.mkdir()
    data = os.urandom(6 * 1024 * 1024 + 17)  # > the 5 MiB minimum part: two parts
    (big / "model.pt").write_bytes(data)
    store = connect(s3_server, multipart_threshold=1024 * 1024, multipart_chunksize=5 * 1024 * 1024)
    store.push(big, f"s3://{bucket}/big")
    etag = s3.head_object(Bucket=bucket, Key="big/model.pt")["ETag"].strip('"')
    assert etag.endswith("-2")  # a multipart upload of two parts
    store.pull(f"s3://{bucket}/big", tmp_path / "copy")
    assert (tmp_path / "copy" / "model.pt").read_bytes() == data


def test_files_in_parts_take_turns_while_small_files_go_alongside(tmp_path, proxy, s3, bucket):
    run = tmp_path / "run"
    run.mkdir()
    for name in ("a.pt", "b.pt"):
        (run / name).write_bytes(os.urandom(6 * 1024 * 1024))  # two parts each
    (run / "c.csv").write_text("step\n1\n")
    store = connect(proxy.url, jobs=3, multipart_threshold=5 * 1024 * 1024, multipart_chunksize=5 * 1024 * 1024)
    store.push(run, f"s3://{bucket}/r")
    order = [seen.path.split("?")[0].rsplit("/", 1)[-1] for seen in proxy.requests() if ".pt" in seen.path]
    first = order[0]
    n = order.count(first)  # create, two parts, complete
    assert n == 4 and order[:n] == [first] * n, order  # one file's parts all done before the other's begin
    assert keys(s3, bucket) == sorted(f"r/{name}" for name in ("a.pt", "b.pt", "c.csv", MANIFEST_NAME))


def test_ctrl_c_cancels_the_transfers_in_flight(tmp_path, s3_server, s3, bucket):
    import signal
    import threading

    big = tmp_path / "big"
    big.mkdir()
    (big / "model.pt").write_bytes(os.urandom(30 * 1024 * 1024))  # six parts of 5 MiB

    class Interrupt(TransferCallback):
        def __init__(self) -> None:
            self.sent = 0
            self.lock = threading.Lock()

        def on_bytes(self, count: int) -> None:  # from a transfer thread, as a user's Ctrl-C would come
            with self.lock:
                self.sent += count
                if self.sent - count < 1024 * 1024 <= self.sent:
                    os.kill(os.getpid(), signal.SIGINT)

    store = connect(s3_server, jobs=2, multipart_threshold=5 * 1024 * 1024, multipart_chunksize=5 * 1024 * 1024)
    progress = Interrupt()
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # what a terminal's Ctrl-C raises
    try:
        with pytest.raises(KeyboardInterrupt):
            store.push(big, f"s3://{bucket}/big", callback=progress)
    finally:
        signal.signal(signal.SIGINT, previous)
    # the push never looks complete (no manifest) and leaves no multipart upload open; the file
    # itself may have been sent whole if its last part was already on its way
    assert ".tfkit-manifest.json" not in {key.rsplit("/", 1)[-1] for key in keys(s3, bucket)}
    assert not s3.list_multipart_uploads(Bucket=bucket).get("Uploads")  # the parts sent were abandoned


def test_transient_500s_are_retried(tmp_path, proxy, s3_server, bucket):
    run = make_run(tmp_path / "run")
    proxy.fail(500, "InternalError", method="PUT", path_contains="/train_log.csv")
    proxy.fail(503, "ServiceUnavailable", method="GET", path_contains="/checkpoints/2048.pt")
    store = connect(proxy.url)
    store.push(run, f"s3://{bucket}/r")
    assert [s.status for s in proxy.requests("PUT", "/train_log.csv")] == [500, 200]
    dest = tmp_path / "copy"
    store.pull(f"s3://{bucket}/r", dest)
    gets = [s.status for s in proxy.requests("GET", "/checkpoints/2048.pt")]
    # the retry may ask for the whole object (200) or resume it with a range (206), by boto3 version
    assert len(gets) == 2 and gets[0] == 503 and gets[1] in (200, 206), gets
    assert tree(dest) == tree(run)


def test_errors_that_do_not_pass_end_in_one_line(tmp_path, proxy, s3_server, bucket):
    run = make_run(tmp_path / "run")
    proxy.fail(500, "InternalError", method="PUT", path_contains="/summary.json", times=99)
    with pytest.raises(StorageError, match="InternalError") as info:
        connect(proxy.url, max_attempts=2).push(run, f"s3://{bucket}/r")
    assert "\n" not in str(info.value)
    assert len(proxy.requests("PUT", "/summary.json")) == 2  # max_attempts, then the error
    assert proxy.requests("PUT", MANIFEST_NAME) == []  # no manifest for a failed push

    with pytest.raises(StorageError, match="bucket 'no-such-bucket' does not exist"):
        connect(s3_server).push(run, "s3://no-such-bucket/r")
    proxy.fail(403, "AccessDenied", method="GET", path_contains="list-type=2")
    with pytest.raises(StorageError, match=f"access denied to s3://{bucket}/r/"):
        connect(proxy.url).pull(f"s3://{bucket}/r", tmp_path / "copy")
    with pytest.raises(StorageError, match="nothing found at"):
        connect(s3_server).pull(f"s3://{bucket}/nothing-here", tmp_path / "copy")
    with pytest.raises(StorageError, match="cannot reach the S3 endpoint at http://127.0.0.1:9"):
        connect("http://127.0.0.1:9", max_attempts=1).push(run, f"s3://{bucket}/r")
    # a password in the endpoint URL never shows, not even in the URL botocore quotes
    with pytest.raises(StorageError, match="cannot reach the S3 endpoint at http://127.0.0.1:9") as info:
        connect("http://me:url-password-42@127.0.0.1:9", max_attempts=1).push(run, f"s3://{bucket}/r")
    assert "url-password-42" not in str(info.value) and "me:" not in str(info.value)


def test_custom_endpoints_send_no_optional_checksums(tmp_path, proxy, bucket):
    run = make_run(tmp_path / "run")
    connect(proxy.url).push(run, f"s3://{bucket}/r")
    puts = proxy.requests("PUT")
    assert puts
    for seen in puts:
        names = {k.lower() for k in seen.headers}
        assert not [n for n in names if n.startswith(("x-amz-checksum-", "x-amz-sdk-checksum"))], names
        assert "aws-chunked" not in seen.headers.get("Content-Encoding", "")
    assert f"/{bucket}/r/" in puts[0].path  # path-style addressing


def test_list_runs(tmp_path, s3_server, s3, bucket):
    store = connect(s3_server)
    store.push(make_run(tmp_path / "a"), f"s3://{bucket}/runs/a")
    s3.put_object(Bucket=bucket, Key="runs/b/checkpoints/99.pt", Body=b"12345")
    s3.put_object(Bucket=bucket, Key="runs/b/checkpoints/100.pt", Body=b"123")
    s3.put_object(Bucket=bucket, Key="runs/README.md", Body=b"hello")
    runs = {run.name: run for run in store.list_runs(f"s3://{bucket}/runs/")}
    assert list(runs) == [".", "a", "b"]
    a = runs["a"]
    expected = (len(tree(tmp_path / "a")), 2048, True, f"s3://{bucket}/runs/a/")
    assert (a.files, a.latest_checkpoint, a.manifest, a.uri) == expected
    assert a.size == sum(len(b) for b in tree(tmp_path / "a").values())
    assert (runs["b"].files, runs["b"].size, runs["b"].latest_checkpoint, runs["b"].manifest) == (2, 8, 100, False)
    assert (runs["."].files, runs["."].latest_checkpoint) == (1, None)
    assert store.list_runs(f"s3://{bucket}/empty/") == []
    [itself] = store.list_runs(f"s3://{bucket}/runs/a")  # a run's own prefix: one entry
    assert (itself.name, itself.files, itself.latest_checkpoint, itself.manifest) == (".", a.files, 2048, True)
    [top] = store.list_runs(f"s3://{bucket}/")
    assert (top.name, top.files, top.manifest) == ("runs", a.files + 3, False)


def test_dotenv_credentials_and_no_credentials(tmp_path, s3_server, s3_env, bucket, monkeypatch):
    run = make_run(tmp_path / "run")
    secret = os.environ.pop("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(StorageError, match="missing: AWS_SECRET_ACCESS_KEY"):
        S3Store.connect(endpoint_url=s3_server)
    key_id = os.environ.pop("AWS_ACCESS_KEY_ID")
    with pytest.raises(StorageError, match="no AWS credentials found"):
        S3Store.connect(endpoint_url=s3_server)
    os.environ["AWS_ACCESS_KEY_ID"] = key_id
    (s3_env / ".env").write_text(f"AWS_SECRET_ACCESS_KEY={secret}\nAWS_ACCESS_KEY_ID=ignored-because-set\n")
    store = S3Store.connect(endpoint_url=s3_server)
    assert store.push(run, f"s3://{bucket}/r").uploaded
    assert os.environ["AWS_ACCESS_KEY_ID"] == key_id
    with pytest.raises(StorageError, match="AWS profile 'nosuch' not found"):
        S3Store.connect(endpoint_url=s3_server, profile="nosuch")
