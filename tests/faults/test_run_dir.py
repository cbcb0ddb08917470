"""Faults around a run directory, with real processes, signals and file systems.

One writer per run directory (a lock that dies with its process), `--overwrite` that
replaces nothing until the new run has started, SIGTERM handled like Ctrl-C, CSV rows
written whole or not at all, and a full disk, a read-only path or a file where a folder
should be ending in one line and exit code 2. The file-system tests mount a small tmpfs,
so they need root (as in CI); elsewhere they are skipped with the reason.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import tiny_cli_args

ROOT = Path(__file__).resolve().parents[2]
# the tfkit under test, whatever the working directory (the S3 fixtures change it)
ENV = {**os.environ, "COLUMNS": "200", "WANDB_MODE": "offline", "PYTHONPATH": str(ROOT)}
# long enough to be caught mid-way; the time cap only guards against a run nobody stops
LONG = ["--max-steps", "100000", "--max-time-seconds", "60", "--quiet"]


def tfkit(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "tfkit", *args],
        env=env or ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def pretrain(out: Path, *extra: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    return tfkit("train", "pretrain", *tiny_cli_args(out), *extra, env=env)


def finish(proc: subprocess.Popen, timeout: float = 120) -> tuple[int, str, str]:
    stdout, stderr = proc.communicate(timeout=timeout)
    return proc.returncode, stdout, stderr


def wait_until_training(proc: subprocess.Popen, out: Path, rows: int = 1) -> None:
    """Wait until `train_log.csv` holds `rows` rows (after its header)."""
    log = out / "train_log.csv"
    deadline = time.time() + 120
    while not (log.exists() and len(log.read_bytes().splitlines()) > rows):
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, "the run never logged a row"
        time.sleep(0.05)


def one_error_line(rc: int, stderr: str, *needles: str) -> None:
    """Exit 2, and stderr is one `Error:` line (no traceback) holding every needle."""
    assert rc == 2, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), stderr
    for needle in needles:
        assert needle in lines[0], stderr


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under `root` but the lock (relative path -> bytes)."""
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


def old_run(root: Path) -> dict[str, bytes]:
    """A small finished run, written by hand; returns its files."""
    (root / "checkpoints").mkdir(parents=True)
    (root / "train_config.json").write_text('{"train": {"seed": 1234}, "meta": {}}\n')
    (root / "train_log.csv").write_text("step,train_loss\n5,1.5\n10,1.25\n")
    (root / "val_log.csv").write_text("step,val_loss\n10,1.3\n")
    (root / "summary.json").write_text('{"status": "completed", "step": 10}\n')
    (root / "checkpoints" / "1280.pt").write_bytes(os.urandom(3000))
    return snapshot(root)


def csv_is_whole(path: Path) -> int:
    """Every line of the CSV has the header's field count and ends in a newline; returns the row count."""
    data = path.read_bytes()
    assert data.endswith(b"\n"), data[-200:]
    rows = list(csv.reader(data.decode().splitlines()))
    assert all(len(row) == len(rows[0]) for row in rows), [len(r) for r in rows]
    return len(rows) - 1


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs, unmounted afterwards; skips without root."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs (a disk that fills up, a read-only path) needs root")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=True)


def fill(mnt: Path, leave: int) -> None:
    """Fill the file system at `mnt` until about `leave` bytes are free."""
    st = os.statvfs(mnt)
    free = st.f_bavail * st.f_frsize
    with open(mnt / "filler", "wb") as f:
        f.write(b"\1" * max(0, free - leave))
        f.flush()
        os.fsync(f.fileno())


# ---- one writer per run directory ----------------------------------------------------


def test_second_writer_is_refused_and_first_run_keeps_its_files(tmp_path):
    out = tmp_path / "run"
    first = pretrain(out, "--seed", "11", *LONG)
    wait_until_training(first, out)
    # the second run asks to replace the directory: it must not touch the running one
    rc, _, stderr = finish(pretrain(out, "--seed", "22", "--overwrite", "--quiet"))
    one_error_line(rc, stderr, str(out), "in use by another tfkit run", f"process {first.pid}")

    first.send_signal(signal.SIGINT)  # the first run ends as it would have: at a step, with its checkpoint
    rc, _, stderr = finish(first)
    assert rc == 130, stderr
    config = json.loads((out / "train_config.json").read_text())
    summary = json.loads((out / "summary.json").read_text())
    assert config["train"]["seed"] == 11 and summary["status"] == "interrupted"
    steps = [int(row["step"]) for row in csv.DictReader((out / "train_log.csv").open())]
    assert steps[:-1] == list(range(5, 5 * len(steps), 5))  # one run's rows, in order, none twice
    assert steps[-1] == summary["step"]
    assert [int(p.stem) for p in (out / "checkpoints").glob("*.pt")] == [summary["tokens_seen"]]


def lock_is_free(run_dir: Path) -> bool:
    """Whether the run directory's lock could be taken now (it is let go at once)."""
    with open(run_dir / ".lock", "rb") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True


def test_the_lock_dies_with_a_killed_run(tmp_path):
    out = tmp_path / "run"
    first = pretrain(out, *LONG)
    wait_until_training(first, out)
    assert not lock_is_free(out)
    first.kill()
    first.wait()
    assert lock_is_free(out)  # no stale lock: the kernel let it go with the process

    rc, _, stderr = finish(pretrain(out, "--overwrite", "--quiet"))
    assert rc == 0, stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["step"] == 20
    assert [int(p.stem) for p in (out / "checkpoints").glob("*.pt")] == [summary["tokens_seen"]]
    assert csv_is_whole(out / "train_log.csv") == 4
    assert not list(out.glob(".replaced.*"))


# ---- --overwrite replaces nothing until the new run has started ----------------------


def test_overwrite_restores_the_old_run_when_the_model_fails_to_build(tiny_config, monkeypatch):
    from tfkit.training import loop

    out = Path(tiny_config.log.out)
    before = old_run(out)

    def broken(*args, **kwargs):
        raise RuntimeError("the model cannot be built")

    monkeypatch.setattr(loop, "GPT", broken)
    with pytest.raises(RuntimeError, match="cannot be built"):
        loop.train(tiny_config, overwrite=True)
    assert snapshot(out) == before
    assert not list(out.glob(".replaced.*"))

    monkeypatch.undo()  # the lock went with the failed run: the next one may replace the old run
    result = loop.train(tiny_config, overwrite=True)
    assert result.status == "completed"
    assert json.loads((out / "train_config.json").read_text())["train"]["seed"] == tiny_config.train.seed
    assert [p.name for p in (out / "checkpoints").glob("*.pt")] == [f"{result.summary['tokens_seen']}.pt"]
    assert not list(out.glob(".replaced.*"))


def test_a_replacement_cut_short_by_kill_9_is_undone_by_the_next_run(tmp_path):
    from tfkit.errors import ConfigError
    from tfkit.training.rundir import prepare_run_dir

    out = tmp_path / "run"
    before = old_run(out)
    # what a run killed between setting the old run aside and writing its config leaves
    aside = out / ".replaced.abc123.tmp"
    aside.mkdir()
    for name in ("train_config.json", "train_log.csv", "val_log.csv", "summary.json", "checkpoints"):
        os.replace(out / name, aside / name)
    with pytest.raises(ConfigError, match="already holds a run"):
        prepare_run_dir(out, overwrite=False)
    assert snapshot(out) == before


def test_overwrite_with_a_bad_value_keeps_the_old_run(tmp_path):
    out = tmp_path / "victim"
    before = old_run(out)
    rc, _, stderr = finish(pretrain(out, "--lr", "nan", "--overwrite", "--quiet"))
    assert rc != 0, stderr  # refused before the run directory is opened, or failed after: either way
    assert snapshot(out) == before


def test_overwrite_on_a_full_disk_keeps_the_old_run(tmpfs):
    out = tmpfs / "victim"
    before = old_run(out)
    fill(tmpfs, 0)  # the new run's train_config.json cannot be written
    rc, _, stderr = finish(pretrain(out, "--overwrite", "--quiet"))
    one_error_line(rc, stderr, "no space left on device writing", str(out))
    assert snapshot(out) == before
    assert not list(out.glob(".replaced.*"))


# ---- SIGTERM is Ctrl-C ---------------------------------------------------------------


def test_sigterm_stops_at_a_step_checkpoints_pushes_and_exits_143(tmp_path, s3_server, s3, bucket):
    out = tmp_path / "run"
    env = {**os.environ, **ENV, "AWS_ENDPOINT_URL": s3_server}  # s3_env's fake credentials
    proc = pretrain(out, *LONG, "--s3-uri", f"s3://{bucket}/runs", env=env)
    wait_until_training(proc, out, rows=2)
    proc.send_signal(signal.SIGTERM)
    rc, _, stderr = finish(proc)
    assert rc == 143, stderr
    assert "Traceback" not in stderr

    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "interrupted" and "SIGTERM" in summary["message"]
    assert 0 < summary["step"] < 100000
    assert [int(p.stem) for p in (out / "checkpoints").glob("*.pt")] == [summary["tokens_seen"]]
    assert csv_is_whole(out / "train_log.csv") >= 2
    pushed = s3.get_object(Bucket=bucket, Key="runs/run/summary.json")["Body"].read()
    assert pushed == (out / "summary.json").read_bytes()


def test_sigterm_unwinds_a_command_like_ctrl_c(tmp_path):
    """A command that is not training: SIGTERM runs its cleanup and ends in one line, exit 143."""
    script = (
        "import os, sys, time\n"
        "from tfkit.cli import app as root\n"
        "marker = sys.argv[1]\n"
        "def slow():\n"
        "    open(marker + '.tmp', 'w').close()\n"
        "    try:\n"
        "        time.sleep(60)\n"
        "    except BaseException:\n"
        "        os.unlink(marker + '.tmp')\n"
        "        raise\n"
        "root.command(root.app, 'slow')(slow)\n"
        "sys.argv = ['tfkit', 'slow']\n"
        "root.main()\n"
    )
    marker = tmp_path / "work"
    proc = subprocess.Popen(
        [sys.executable, "-c", script, str(marker)], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.time() + 60
    while not Path(f"{marker}.tmp").exists():
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    rc, _, stderr = finish(proc)
    assert rc == 143, stderr
    assert stderr.strip().splitlines() == ["Error: terminated by SIGTERM"]
    assert not Path(f"{marker}.tmp").exists()


# ---- rows whole, a full disk, a read-only path, a file where a folder should be ------


def test_csv_rows_are_whole_when_the_disk_fills(tmpfs):
    from tfkit.tracking.csv import CsvLog

    fill(tmpfs, 8192)
    log = CsvLog(tmpfs / "train_log.csv")
    row = {"step": 0, "train_loss": 1.0, "note": "x" * 37}
    with pytest.raises(OSError) as caught:
        for step in range(10_000):
            log.write({**row, "step": step})
    with contextlib.suppress(OSError):  # as the trainer closes its logs after a failure
        log.close()
    assert csv_is_whole(tmpfs / "train_log.csv") > 10
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(tmpfs / "train_log.csv")


def test_full_disk_during_training_is_one_line_and_leaves_whole_rows_and_a_summary(tmpfs):
    out = tmpfs / "run"
    fill(tmpfs, 88 * 1024)  # room for the config, the summary's reserve and a few dozen rows
    rc, _, stderr = finish(pretrain(out, "--max-steps", "1000", "--log-every", "1", "--quiet"))
    one_error_line(rc, stderr, "no space left on device writing", str(out))
    assert csv_is_whole(out / "train_log.csv") > 0
    if (out / "val_log.csv").exists():
        csv_is_whole(out / "val_log.csv")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "failed" and "No space left on device" in summary["message"]
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]


def test_failed_checkpoint_save_leaves_a_summary(tmpfs):
    out = tmpfs / "run"
    fill(tmpfs, 160 * 1024)  # the logs of 20 steps fit; a checkpoint (about 300 KB) does not
    rc, _, stderr = finish(pretrain(out, "--quiet"))
    one_error_line(rc, stderr, "no space left on device writing", str(out / "checkpoints"))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "failed" and "No space left on device" in summary["message"]
    assert csv_is_whole(out / "train_log.csv") == 4
    assert not list((out / "checkpoints").iterdir())


def test_read_only_path_and_files_where_folders_should_be(tmp_path, tmpfs):
    (tmpfs / "existing").mkdir()
    subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], check=True)
    (tmp_path / "file").write_text("not a folder\n")
    procs = {
        "read-only": pretrain(tmpfs / "existing" / "run", "--quiet"),
        "file": pretrain(tmp_path / "file", "--quiet"),
        "parent": pretrain(tmp_path / "file" / "run", "--quiet"),
    }
    results = {name: finish(proc) for name, proc in procs.items()}
    one_error_line(results["read-only"][0], results["read-only"][2], "read-only file system")
    one_error_line(results["file"][0], results["file"][2], f"--out {tmp_path / 'file'} is a file")
    one_error_line(results["parent"][0], results["parent"][2], f"inside {tmp_path / 'file'}, which is a file")
    assert (tmp_path / "file").read_text() == "not a folder\n"


# ---- damaged logs on --resume -----------------------------------------------------------

# columns that depend on the clock, not on what was trained
CLOCK = {"time_s", "tokens_per_s", "mfu", "peak_memory_mb", "data_wait_frac"}


def junk(size: int, seed: int) -> bytes:
    """Random bytes as a disk fault or a stray write leaves them: lines of anything but NUL and line ends."""
    import random

    body = bytes(b if b not in b"\0\r\n" else 0x78 for b in random.Random(seed).randbytes(size))
    return b"".join(body[i : i + 100] + b"\n" for i in range(0, size, 100))


def logged(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return [{k: v for k, v in row.items() if k not in CLOCK} for row in csv.DictReader(f)]


def train_in_process(*args: str):
    from typer.testing import CliRunner

    from tfkit.cli.app import app

    return CliRunner().invoke(app, ["train", "pretrain", *args, "--checkpoint-every", "10", "--quiet"])


@pytest.fixture
def stopped_run(tmp_path: Path, one_thread) -> tuple[Path, Path]:
    """(a finished 20-step run, a copy of it as a run killed after step 20 but before its checkpoint)."""
    import shutil

    reference = tmp_path / "reference"
    done = train_in_process(*tiny_cli_args(reference))
    assert done.exit_code == 0, done.output
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    newest = max((run / "checkpoints").glob("[0-9]*.pt"), key=lambda p: int(p.stem))
    newest.unlink()
    Path(f"{newest}.sha256").unlink()
    (run / "summary.json").unlink()
    return reference, run


def test_resume_sets_damaged_log_bytes_aside_and_trains_on(stopped_run):
    reference, run = stopped_run
    train_junk, spike_junk = junk(5000, 1), junk(5000, 2)
    with open(run / "train_log.csv", "ab") as f:
        f.write(train_junk)
    spikes = b"step,train_loss,grad_norm,loss_threshold,grad_norm_threshold,action\n3,1.5,2.5,1.25,2.0,log\n"
    (run / "spikes.csv").write_bytes(spikes + spike_junk + b"\0" * 512)  # and a NUL tail: nothing to keep

    resumed = train_in_process(*tiny_cli_args(run), "--resume", "auto")
    assert resumed.exit_code == 0, resumed.output
    warnings = [line for line in resumed.output.splitlines() if line.startswith("Warning: ")]
    assert len(warnings) == 2 and "Traceback" not in resumed.output
    assert f"{run / 'train_log.csv'} held {len(train_junk):,} bytes that are not whole rows of it" in warnings[0]
    # the run goes on as if nothing had happened: every row as the uninterrupted run logged it
    assert logged(run / "train_log.csv") == logged(reference / "train_log.csv")
    assert logged(run / "val_log.csv") == logged(reference / "val_log.csv")
    assert (run / "spikes.csv").read_bytes() == spikes
    # and nothing is lost: the damage is in the side files the warnings name
    sides = {p.name.split(".torn-")[0]: p for p in run.glob("*.torn-*")}
    assert sides["train_log.csv"].read_bytes() == train_junk and sides["spikes.csv"].read_bytes() == spike_junk
    assert sides["train_log.csv"].name in warnings[0] and sides["spikes.csv"].name in warnings[1]
    resumed_record = json.loads((run / "train_config.json").read_text())["meta"]["resumed"][0]
    assert [note.split("; ")[-1] for note in resumed_record["set_aside"]] == [w.split("; ")[-1] for w in warnings]


@pytest.mark.parametrize("log", ["train_log.csv", "val_log.csv", "spikes.csv"])
def test_resume_refuses_a_log_whose_header_is_damaged_and_changes_nothing(stopped_run, log):
    _, run = stopped_run
    path = run / log
    rows = path.read_bytes().split(b"\n", 1)[1] if path.exists() else b"3,1.5,2.5,1.25,2.0,log\n"
    path.write_bytes(b"a,b,c\n" + rows)
    before = snapshot(run)
    refused = train_in_process(*tiny_cli_args(run), "--resume", "auto")
    assert refused.exit_code == 2, refused.output
    lines = refused.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), refused.output
    assert f"{path}: its first line is not the header of this log ('a,b,c')" in lines[0]
    assert snapshot(run) == before
