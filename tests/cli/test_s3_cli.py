"""`tfkit s3 push | pull | ls` and `train --s3-uri` through the real CLI, against a moto S3 server."""

from __future__ import annotations

import json
import os

import pytest
from typer.testing import CliRunner

from tests.conftest import tiny_cli_args
from tests.storage.s3_fixtures import SECRET_KEY, keys, make_run, tree
from tfkit.cli.app import app
from tfkit.storage.manifest import MANIFEST_NAME

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, list(args), env={"COLUMNS": "200"})


def one_error_line(result, text: str) -> None:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    assert text in result.output, result.output


def test_push_ls_pull_round_trip(tmp_path, s3_server, s3, bucket):
    run = make_run(tmp_path / "runs" / "ts")
    end = ("--endpoint-url", s3_server)
    uri = f"s3://{bucket}/tfkit/ts"
    pushed = invoke("s3", "push", str(run), uri, *end)
    assert pushed.exit_code == 0, pushed.output
    assert f"uploaded {len(tree(run))} files" in pushed.output and "0 unchanged" in pushed.output

    again = invoke("s3", "push", str(run), uri, *end, "--json")
    assert again.exit_code == 0, again.output
    assert json.loads(again.output)["uploaded"] == [] and "uploaded 0 files" not in again.output

    listed = invoke("s3", "ls", f"s3://{bucket}/tfkit/", *end, "--json")
    assert listed.exit_code == 0, listed.output
    [row] = json.loads(listed.output)
    assert (row["name"], row["files"], row["latest_checkpoint"], row["manifest"]) == ("ts", len(tree(run)), 2048, True)
    table = invoke("s3", "ls", f"s3://{bucket}/tfkit/", *end)
    assert table.exit_code == 0 and "ts" in table.output and "2,048 tokens" in table.output and "yes" in table.output

    copy = tmp_path / "copy"
    pulled = invoke("s3", "pull", uri, str(copy), *end)
    assert pulled.exit_code == 0, pulled.output
    assert "verified against the manifest" in pulled.output
    assert tree(copy) == tree(run)
    assert "0 files" in invoke("s3", "pull", uri, str(copy), *end).output  # nothing to fetch again

    some = tmp_path / "some"
    result = invoke("s3", "pull", uri, str(some), *end, "--include", "*.csv", "--include", "train_config.json")
    assert result.exit_code == 0, result.output
    assert sorted(tree(some)) == ["train_config.json", "train_log.csv", "val_log.csv"]


def test_changed_files_and_dry_run(tmp_path, s3_server, s3, bucket):
    run = make_run(tmp_path / "run")
    end = ("--endpoint-url", s3_server)
    uri = f"s3://{bucket}/r"
    dry = invoke("s3", "push", str(run), uri, *end, "--dry-run")
    assert dry.exit_code == 0 and "would upload checkpoints/1024.pt" in dry.output
    assert keys(s3, bucket) == []
    assert invoke("s3", "push", str(run), uri, *end, "-q").exit_code == 0
    (run / "summary.json").write_text('{"status": "interrupted"}\n')
    result = invoke("s3", "push", str(run), uri, *end, "--json")
    assert json.loads(result.output)["uploaded"] == ["summary.json"]
    assert s3.get_object(Bucket=bucket, Key="r/summary.json")["Body"].read() == (run / "summary.json").read_bytes()


def test_corrupted_object_and_traversal_key_are_one_line_errors(tmp_path, s3_server, s3, bucket):
    run = make_run(tmp_path / "run")
    end = ("--endpoint-url", s3_server)
    assert invoke("s3", "push", str(run), f"s3://{bucket}/r", *end).exit_code == 0
    s3.put_object(Bucket=bucket, Key="r/val_log.csv", Body=b"step,val_loss\n20,9.9\n")
    copy = tmp_path / "copy"
    result = invoke("s3", "pull", f"s3://{bucket}/r", str(copy), *end)
    one_error_line(result, "did not match the manifest")
    assert "val_log.csv" in result.output and not (copy / "val_log.csv").exists()

    s3.put_object(Bucket=bucket, Key="evil/../../outside.txt", Body=b"x")
    result = invoke("s3", "pull", f"s3://{bucket}/evil", str(tmp_path / "evil"), *end)
    one_error_line(result, f"refusing 's3://{bucket}/evil/../../outside.txt'")
    assert not (tmp_path / "outside.txt").exists()


@pytest.mark.parametrize("command", ["push", "pull", "ls"])
def test_no_credentials_anywhere_is_one_line(tmp_path, s3_server, s3_env, command):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        del os.environ[name]  # left: empty AWS config files, HOME in tmp, no .env, no metadata service
    run = make_run(tmp_path / "run")
    args = {
        "push": [str(run), "s3://some-bucket/r"],
        "pull": ["s3://some-bucket/r", str(tmp_path / "copy")],
        "ls": ["s3://some-bucket/"],
    }[command]
    result = invoke("s3", command, *args, "--endpoint-url", s3_server)
    one_error_line(result, "no AWS credentials found")
    assert not (tmp_path / "copy").exists()


def test_user_errors(tmp_path, s3_server, bucket):
    end = ("--endpoint-url", s3_server)
    run = make_run(tmp_path / "run")
    missing = invoke("s3", "push", str(run), "s3://no-such-bucket/r", *end)
    one_error_line(missing, "bucket 'no-such-bucket' does not exist")
    one_error_line(invoke("s3", "ls", "bucket/r", *end), "must look like s3://bucket/prefix")
    one_error_line(invoke("s3", "push", str(tmp_path / "missing"), f"s3://{bucket}/r", *end), "is not a directory")
    one_error_line(invoke("s3", "pull", f"s3://{bucket}/nothing", str(tmp_path / "c"), *end), "nothing found at")
    one_error_line(invoke("s3", "ls", f"s3://{bucket}/", "--endpoint-url", "localhost:9000"), "must start with http")
    one_error_line(invoke("s3", "ls", f"s3://{bucket}/", *end, "--profile", "nosuch"), "profile 'nosuch' not found")


def test_access_denied_is_one_line(tmp_path, proxy, bucket):
    proxy.fail(403, "AccessDenied", method="GET", path_contains="list-type=2")
    result = invoke("s3", "ls", f"s3://{bucket}/runs/", "--endpoint-url", proxy.url)
    one_error_line(result, f"access denied to s3://{bucket}/runs/")


def test_secrets_stay_out_of_output_and_pushes(tmp_path, s3_server, s3_env, s3, bucket, proxy):
    del os.environ["AWS_SECRET_ACCESS_KEY"]
    (s3_env / ".env").write_text(f"AWS_SECRET_ACCESS_KEY={SECRET_KEY}\nAWS_ENDPOINT_URL={s3_server}\n")
    make_run(s3_env / "run")
    outputs = []
    for args in (
        ["push", ".", f"s3://{bucket}/cwd"],  # the folder holding .env
        ["push", ".", f"s3://{bucket}/cwd", "--json"],
        ["ls", f"s3://{bucket}/", "--json"],
        ["pull", f"s3://{bucket}/cwd", str(tmp_path / "copy"), "--json"],
    ):
        result = invoke("s3", *args)
        assert result.exit_code == 0, result.output
        outputs.append(result.output)
    assert not [k for k in keys(s3, bucket) if k.endswith(".env")]
    assert not (tmp_path / "copy" / ".env").exists()
    # a store that echoes the secret back in an error message
    proxy.fail(400, "InvalidRequest", message=f"bad key {SECRET_KEY}")
    result = invoke("s3", "ls", f"s3://{bucket}/", "--endpoint-url", proxy.url)
    one_error_line(result, "****")
    outputs.append(result.output)
    assert not [out for out in outputs if SECRET_KEY in out]


def test_train_pushes_the_run_at_the_end_and_after_checkpoints(tmp_path, proxy, s3, bucket):
    os.environ["AWS_ENDPOINT_URL"] = proxy.url  # restored by the s3_env fixture
    out = tmp_path / "a" / "m3"
    s3_args = ["--s3-uri", f"s3://{bucket}/runs", "--s3-every-checkpoint", "--checkpoint-every", "5"]
    result = invoke("train", "pretrain", *tiny_cli_args(out), *s3_args, "--json")
    assert result.exit_code == 0, result.output
    pushed = json.loads(result.output)["s3"]
    assert pushed["uri"] == f"s3://{bucket}/runs/m3/"
    assert pushed["background_pushes"] >= 1 and pushed["background_errors"] == []
    assert len(proxy.requests("PUT", MANIFEST_NAME)) >= 2  # a background push, then the final one
    assert f"runs/m3/{MANIFEST_NAME}" in keys(s3, bucket)
    assert "runs/m3/checkpoints/640.pt" in keys(s3, bucket)  # the first checkpoint: 5 steps x 16 x 8 tokens

    copy = tmp_path / "copy"
    assert invoke("s3", "pull", f"s3://{bucket}/runs/m3", str(copy)).exit_code == 0
    assert tree(copy) == tree(out)

    # the same run name again under the same prefix: refused before anything is written
    other = tmp_path / "b" / "m3"
    result = invoke("train", "pretrain", *tiny_cli_args(other), *s3_args)
    one_error_line(result, f"s3://{bucket}/runs/m3/ already holds files")
    assert not (other / "train_config.json").exists()


def test_s3_training_options_are_checked(tmp_path):
    out = tmp_path / "run"
    result = invoke("train", "pretrain", "--out", str(out), "--s3-every-checkpoint")
    one_error_line(result, "--s3-every-checkpoint needs --s3-uri")
    one_error_line(invoke("train", "pretrain", "--out", str(out), "--s3-uri", "my-bucket/x"), "--s3-uri must look like")
    assert not out.exists()
