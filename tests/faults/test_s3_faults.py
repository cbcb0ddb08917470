"""`tfkit s3` faults through the real CLI: a silent endpoint, local edits a pull would
replace, the mode of pulled files, and symlinks that lead out of a pushed directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
from typer.testing import CliRunner

from tests.storage.s3_fixtures import keys, make_run, tree
from tfkit.cli.app import app
from tfkit.io import current_umask

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, list(args), env={"COLUMNS": "200"})


@pytest.mark.parametrize("command", ["push", "pull", "ls"])
def test_a_silent_endpoint_ends_in_one_line_within_the_timeout(tmp_path, s3_env, silent_server, command):
    args = {
        "push": [str(make_run(tmp_path / "run")), "s3://bucket/r", "--json"],
        "pull": ["s3://bucket/r", str(tmp_path / "copy"), "--json"],
        "ls": ["s3://bucket/", "--json"],
    }[command]
    start = time.monotonic()
    result = invoke("s3", command, *args, "--endpoint-url", silent_server.url, "--timeout", "1")
    elapsed = time.monotonic() - start
    assert result.exit_code == 2, result.output
    assert elapsed < 15, elapsed  # 3 tries of 1 s each, plus short pauses
    assert result.stdout == ""  # --json output stays clean: status and error lines go to stderr
    lines = result.stderr.strip().splitlines()
    retries = [line for line in lines if "retrying (attempt" in line]
    errors = [line for line in lines if line not in retries]
    assert len(retries) == 2 and "retrying (attempt 2/3)" in retries[0], result.stderr
    assert len(errors) == 1 and f"no answer from {silent_server.url} within 1 s" in errors[0], result.stderr
    assert "Traceback" not in result.output
    assert len(silent_server.accepted) == 3
    assert not (tmp_path / "copy").exists()


def tfkit_s3(*args: str, timeout: float = 20) -> subprocess.CompletedProcess:
    """`tfkit s3 *args` in a child process, which the test stops if it runs past `timeout`."""
    try:
        return subprocess.run(
            [sys.executable, "-m", "tfkit", "s3", *args],
            check=False,
            env={**os.environ, "COLUMNS": "200"},
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"tfkit s3 {' '.join(args)} was still running after {timeout:g} s")


@pytest.mark.parametrize("trickle_server", ["body", "headers"], indirect=True)
@pytest.mark.parametrize("command", ["ls", "pull"])
def test_an_endpoint_that_trickles_is_retried_and_ends_in_one_line(tmp_path, s3_env, trickle_server, command):
    # 200 and a body of 100 MB (or headers without end) at one step every 0.5 s: every read
    # gets something within --timeout, but the answer as a whole never comes
    args = {"ls": ["s3://bucket/"], "pull": ["s3://bucket/r", str(tmp_path / "copy")]}[command]
    start = time.monotonic()
    result = tfkit_s3(command, *args, "--json", "--endpoint-url", trickle_server.url, "--timeout", "1")
    elapsed = time.monotonic() - start
    assert result.returncode == 2, result.stderr
    assert elapsed < 15, elapsed  # 3 tries of about 1 s each, plus short pauses
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    retries = [line for line in lines if "retrying (attempt" in line]
    errors = [line for line in lines if line not in retries]
    slow = {"body": "its body came slower than 8 KiB/s", "headers": "its status and headers took over 1 s"}
    expected = f"{trickle_server.url} answered too slowly ({slow[trickle_server.mode]})"
    assert len(retries) == 2 and f"{expected}; retrying (attempt 2/3)" in retries[0], result.stderr
    assert len(errors) == 1 and f"{expected}, tried 3 times" in errors[0], result.stderr
    assert len(trickle_server.requests) == 3
    assert not (tmp_path / "copy").exists()


@pytest.mark.parametrize("trickle_server", ["object"], indirect=True)
def test_a_download_that_trickles_ends_in_one_line(tmp_path, s3_env, trickle_server):
    # the listing comes at once; the object's 1 MB comes a byte every 0.5 s
    start = time.monotonic()
    copy = tmp_path / "copy"
    result = tfkit_s3("pull", "s3://bucket/r", str(copy), "--endpoint-url", trickle_server.url, "--timeout", "1")
    elapsed = time.monotonic() - start
    assert result.returncode == 2, result.stderr
    assert elapsed < 15, elapsed  # boto3's managed download tries it 5 times, about 1 s each
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert f"{trickle_server.url} answered too slowly (its body came slower than 8 KiB/s)" in lines[0], lines[0]
    assert [line.split()[0] for line in trickle_server.requests].count("GET") >= 2  # the listing, then the object
    assert [path.name for path in copy.rglob("*") if path.is_file()] == []  # no partial file


def test_the_timeout_must_be_a_positive_number(tmp_path, s3_env, silent_server):
    for bad in ("0", "-1", "nan", "inf"):
        result = invoke("s3", "ls", "s3://bucket/", "--endpoint-url", silent_server.url, "--timeout", bad)
        assert result.exit_code == 2 and "--timeout must be" in result.output, result.output
        assert "Traceback" not in result.output
    assert silent_server.accepted == []


def test_pull_refuses_to_replace_files_changed_locally(tmp_path, s3_server, s3, bucket):
    end = ("--endpoint-url", s3_server)
    uri = f"s3://{bucket}/r"
    run = make_run(tmp_path / "run")
    assert invoke("s3", "push", str(run), uri, *end).exit_code == 0
    copy, clean = tmp_path / "copy", tmp_path / "clean"
    assert invoke("s3", "pull", uri, str(copy), *end).exit_code == 0
    assert invoke("s3", "pull", uri, str(clean), *end).exit_code == 0

    (copy / "summary.json").write_text('{"status": "COMPLETED"}\n')  # edited here, same size
    with open(copy / "val_log.csv", "a") as f:  # edited here, unchanged in the bucket
        f.write("30,1.1\n")
    (copy / "extra.txt").write_text("a file the remote does not have\n")
    (run / "summary.json").write_text('{"status": "interrupted"}\n')  # a new version, pushed from elsewhere
    with open(run / "train_log.csv", "a") as f:
        f.write("30,1.0\n")
    assert invoke("s3", "push", str(run), uri, *end).exit_code == 0

    # a copy nobody edited is brought up to date
    updated = invoke("s3", "pull", uri, str(clean), *end, "--json")
    assert updated.exit_code == 0, updated.output
    assert json.loads(updated.stdout)["downloaded"] == ["summary.json", "train_log.csv"]
    assert tree(clean) == tree(run)

    before = tree(copy)
    refused = invoke("s3", "pull", uri, str(copy), *end)
    assert refused.exit_code == 2, refused.output
    assert len(refused.output.strip().splitlines()) == 1 and "Traceback" not in refused.output
    assert "summary.json, val_log.csv" in refused.output and "--force" in refused.output, refused.output
    assert "train_log.csv" not in refused.output  # not edited here: it would simply be updated
    assert tree(copy) == before  # refused before anything is written

    forced = invoke("s3", "pull", uri, str(copy), *end, "--force", "--json")
    assert forced.exit_code == 0, forced.output
    assert json.loads(forced.stdout)["overwritten"] == ["summary.json", "val_log.csv"]
    assert tree(copy) == {**tree(run), "extra.txt": before["extra.txt"]}

    # a directory that was never pulled into holds files of its own: they are not replaced either
    elsewhere = make_run(tmp_path / "elsewhere")
    (elsewhere / "summary.json").write_text('{"status": "failed"}\n')
    refused = invoke("s3", "pull", uri, str(elsewhere), *end)
    assert refused.exit_code == 2 and "summary.json" in refused.output, refused.output
    assert (elsewhere / "summary.json").read_text() == '{"status": "failed"}\n'


def test_pulled_files_get_the_umask_mode(tmp_path, s3_server, s3, bucket):
    run = make_run(tmp_path / "run")
    end = ("--endpoint-url", s3_server)
    assert invoke("s3", "push", str(run), f"s3://{bucket}/r", *end).exit_code == 0
    old = os.umask(0o027)
    current_umask.cache_clear()
    try:
        result = invoke("s3", "pull", f"s3://{bucket}/r", str(tmp_path / "copy"), *end)
    finally:
        os.umask(old)
        current_umask.cache_clear()
    assert result.exit_code == 0, result.output
    copy = tmp_path / "copy"
    modes = {p.relative_to(copy).as_posix(): p.stat().st_mode & 0o777 for p in copy.rglob("*")}
    files = {rel: mode for rel, mode in modes.items() if (copy / rel).is_file()}
    folders = {rel: mode for rel, mode in modes.items() if (copy / rel).is_dir()}
    assert files.keys() >= tree(run).keys()
    assert set(files.values()) == {0o640}, files  # 0o666 under umask 027, as any new file
    assert set(folders.values()) == {0o750}, folders


def test_push_skips_symlinks_that_lead_out_of_the_directory(tmp_path, s3_server, s3, bucket):
    run = make_run(tmp_path / "run")
    (tmp_path / "private.key").write_text("not part of the run\n")
    (run / "notes" / "key.txt").symlink_to(tmp_path / "private.key")
    (run / "latest.pt").symlink_to("checkpoints/2048.pt")  # inside the directory: pushed as a file
    end = ("--endpoint-url", s3_server)

    result = invoke("s3", "push", str(run), f"s3://{bucket}/r", *end, "--json")
    assert result.exit_code == 0, result.output
    assert "r/notes/key.txt" not in keys(s3, bucket)
    assert "r/latest.pt" in keys(s3, bucket)
    assert json.loads(result.stdout)["skipped_symlinks"] == ["notes/key.txt"]
    warning = result.stderr.strip()
    assert len(warning.splitlines()) == 1 and "notes/key.txt" in warning and "--follow-symlinks" in warning, warning

    followed = invoke("s3", "push", str(run), f"s3://{bucket}/r", *end, "--follow-symlinks")
    assert followed.exit_code == 0 and followed.stderr == "", followed.output
    body = s3.get_object(Bucket=bucket, Key="r/notes/key.txt")["Body"].read()
    assert body == b"not part of the run\n"
