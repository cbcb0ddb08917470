"""RunPusher: background pushes that never block training, and the final push."""

from __future__ import annotations

import os
import time

import pytest

from tests.storage.s3_fixtures import keys, make_run, tree
from tfkit.errors import StorageError
from tfkit.storage.s3 import S3Store
from tfkit.storage.uploader import RunPusher


def test_push_soon_returns_at_once_and_finish_pushes_everything(tmp_path, proxy, s3, bucket):
    os.environ["AWS_ENDPOINT_URL"] = proxy.url  # restored by the s3_env fixture
    run = make_run(tmp_path / "run")
    pusher = RunPusher.open(run, f"s3://{bucket}/runs")
    assert str(pusher.uri) == f"s3://{bucket}/runs/run/"

    proxy.gate.clear()  # the store stops answering: a push now takes as long as we like
    start = time.perf_counter()
    pusher.push_soon()
    pusher.push_soon()
    assert time.perf_counter() - start < 0.5
    time.sleep(0.2)
    assert keys(s3, bucket) == []  # nothing went through yet, and training was not held up
    (run / "checkpoints" / "3072.pt").write_bytes(os.urandom(5000))  # the run goes on meanwhile
    proxy.gate.set()

    info = pusher.finish()
    assert 1 <= info["background_pushes"] <= 2 and info["background_errors"] == []
    assert info["uri"] == f"s3://{bucket}/runs/run/"
    copy = tmp_path / "copy"
    S3Store.connect(endpoint_url=proxy.url).pull(f"s3://{bucket}/runs/run", copy)
    assert tree(copy) == tree(run)


def test_an_occupied_destination_is_refused_unless_overwrite(tmp_path, s3_server, bucket):
    os.environ["AWS_ENDPOINT_URL"] = s3_server
    run = make_run(tmp_path / "a" / "run")
    RunPusher.open(run, f"s3://{bucket}/runs").finish()
    with pytest.raises(StorageError, match=f"s3://{bucket}/runs/run/ already holds files"):
        RunPusher.open(tmp_path / "b" / "run", f"s3://{bucket}/runs")
    assert RunPusher.open(tmp_path / "b" / "run", f"s3://{bucket}/runs", overwrite=True).uri.prefix == "runs/run/"


def test_a_failed_final_push_says_where_the_run_is(tmp_path, proxy, bucket):
    os.environ["AWS_ENDPOINT_URL"] = proxy.url
    run = make_run(tmp_path / "run")
    pusher = RunPusher.open(run, f"s3://{bucket}/runs")
    proxy.fail(403, "AccessDenied", method="GET", path_contains="list-type=2")
    with pytest.raises(StorageError, match=rf"the run is saved in {run}, but pushing it to s3://.*access denied"):
        pusher.finish()
