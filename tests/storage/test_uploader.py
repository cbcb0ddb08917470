"""RunPusher: background pushes that never block training, and the final push."""

from __future__ import annotations

import os
import time

import pytest

from tests.storage.s3_fixtures import keys, make_run, tree
from tfkit.digest import file_sha256, write_digest
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


def test_checkpoints_pruned_by_keep_last_leave_the_bucket_too(tmp_path, s3_server, s3, bucket, tiny_config):
    from tfkit.training.loop import train

    os.environ["AWS_ENDPOINT_URL"] = s3_server
    config = tiny_config.with_updates(
        {
            "log.s3_uri": f"s3://{bucket}/runs",
            "log.s3_every_checkpoint": True,
            "train.checkpoint_every": 2,
            "train.keep_last": 2,
        }
    )
    result = train(config)
    assert result.status == "completed" and result.pushed["background_errors"] == []
    run = tmp_path / "run"
    local = sorted(p.relative_to(run).as_posix() for p in (run / "checkpoints").iterdir())
    assert len(local) == 5  # two checkpoints, their digests and the pointer
    remote = [key.removeprefix("runs/run/") for key in keys(s3, bucket, "runs/run/checkpoints/")]
    assert remote == local
    assert result.pushed["deleted"] == 8  # the 8 older of the 10 checkpoints


def test_a_pruned_checkpoint_the_bucket_pointer_names_stays_until_it_moves(tmp_path, s3_server, s3, bucket):
    os.environ["AWS_ENDPOINT_URL"] = s3_server
    run = make_run(tmp_path / "run")
    checkpoints = run / "checkpoints"
    for name in ("1024.pt", "2048.pt"):
        write_digest(checkpoints / name, file_sha256(checkpoints / name))
    (checkpoints / "latest").write_text("1024.pt\n")  # as a save cut short leaves it
    first = RunPusher.open(run, f"s3://{bucket}/runs")
    first.finish()
    (checkpoints / "1024.pt").unlink()
    (checkpoints / "1024.pt.sha256").unlink()
    first = RunPusher.open(run, f"s3://{bucket}/runs", overwrite=True)
    first.forget([checkpoints / "1024.pt"])
    assert first.finish()["deleted"] == 0  # the bucket's pointer still names it: kept
    assert "runs/run/checkpoints/1024.pt" in keys(s3, bucket)

    (checkpoints / "latest").write_text("2048.pt\n")
    second = RunPusher.open(run, f"s3://{bucket}/runs", overwrite=True)
    second.forget([checkpoints / "1024.pt"])
    assert second.finish()["deleted"] == 1
    remote = keys(s3, bucket, "runs/run/checkpoints/")
    assert [k.removeprefix("runs/run/checkpoints/") for k in remote] == ["2048.pt", "2048.pt.sha256", "latest"]
    copy = tmp_path / "copy"
    S3Store.connect(endpoint_url=s3_server).pull(f"s3://{bucket}/runs/run", copy)
    assert tree(copy) == tree(run)
