"""Faults of `tfkit ablate`: signals, a killed parent, two ablations at once, a torn results file, --overwrite.

Real `python -m tfkit ablate` processes and real signals where a user would send them;
the results file is read back with polars, as a user reads it.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from tests.processes import children_of
from tfkit.ablate.launch import local_job_dir_name
from tfkit.ablate.results import ResultsFile
from tfkit.cli.app import app

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc to find worker processes"),
]

# a model and data small enough that a step takes a millisecond or two on one CPU thread
TINY = [
    "--depth",
    "1",
    "--width",
    "16",
    "--num-heads",
    "1",
    "--seq-len",
    "8",
    "--batch-size",
    "4",
    "--device",
    "cpu",
    "--set",
    "data.train_sequences=256",
    "--set",
    "data.val_examples=32",
]
# runs long enough to be signalled while they train
LONG = [*TINY, "--num-runs", "3", "--max-steps", "1200", "--eval-every", "150", "-c", "--logfile", "r.csv"]


def environment(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "tmp").mkdir(exist_ok=True)
    return {
        **os.environ,
        "COLUMNS": "200",
        "WANDB_MODE": "offline",
        "OMP_NUM_THREADS": "1",
        "TMPDIR": str(tmp_path / "tmp"),
    }


def start(tmp_path: Path, *args: str) -> subprocess.Popen:
    """`tfkit ablate` in its own session and process group, as a terminal starts a command."""
    command = [sys.executable, "-m", "tfkit", "ablate", *args]
    return subprocess.Popen(
        command,
        cwd=tmp_path,
        env=environment(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def finish(proc: subprocess.Popen, timeout: float = 120) -> tuple[int, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out + err


def runs_with_rows(path: Path) -> int:
    lines = path.read_bytes().splitlines()[1:] if path.exists() else []
    return len({line.split(b",")[0] for line in lines})


def wait_for_runs(path: Path, proc: subprocess.Popen, n: int) -> None:
    """Wait until `n` runs have written rows."""
    deadline = time.time() + 90
    while runs_with_rows(path) < n:
        assert proc.poll() is None, finish(proc)[1]
        assert time.time() < deadline, "no results rows in time"
        time.sleep(0.05)


def workers_of(parent: int) -> list[int]:
    """The local launcher's processes of an ablation: each job's controller and the run it trains."""
    deadline = time.time() + 30
    while True:
        controllers = children_of(parent, b"tfkit.ablate.controller")
        runs = [pid for c in controllers for pid in children_of(c, b"submitit.core._submit")]
        if len(runs) == len(controllers) or time.time() > deadline:
            return controllers + runs
        time.sleep(0.05)


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie waiting for a reaper does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait_until_gone(pids: list[int], seconds: float = 30) -> list[int]:
    deadline = time.time() + seconds
    while any(alive(p) for p in pids) and time.time() < deadline:
        time.sleep(0.1)
    return [p for p in pids if alive(p)]


def job_dirs(tmp_path: Path) -> list[Path]:
    """The local launcher's job folders (one per ablation process, named after it)."""
    return list((tmp_path / "runs" / "ablate" / ".jobs").glob("*"))


def assert_each_run_once(path: Path, runs: int) -> pl.DataFrame:
    """Every run completed exactly once, with one row per evaluation and no (run, step) twice."""
    df = pl.read_csv(path)
    assert df["run_id"].n_unique() == runs
    finals = df.filter(pl.col("run_status") != "running")
    assert finals["run_status"].to_list() == ["completed"] * runs, finals.select("run_id", "step", "run_status")
    assert finals["run_id"].n_unique() == runs
    assert df.select("run_id", "step").is_duplicated().sum() == 0
    return df


runner = CliRunner()
SHORT = [*TINY, "--num-runs", "2", "--max-steps", "20", "--eval-every", "10", "-c", "--logfile", "r.csv"]


def ablate(tmp_path: Path, *args: str):
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        return runner.invoke(app, ["ablate", *args], env={"COLUMNS": "200"})
    finally:
        os.chdir(cwd)


@pytest.mark.parametrize("stop", ["sigterm", "ctrl-c"])
def test_a_stop_ends_the_jobs_and_the_resumed_ablation_trains_each_run_once(tmp_path, stop):
    """SIGTERM to the ablation, or Ctrl-C at its terminal, during a 4-run ablation 2 at a time."""
    runs = "4" if stop == "ctrl-c" else "3"
    proc = start(tmp_path, *[runs if LONG[i - 1] == "--num-runs" else a for i, a in enumerate(LONG)], "--jobs", "2")
    wait_for_runs(tmp_path / "r.csv", proc, 2)
    workers = workers_of(proc.pid)
    assert len(workers) == 4  # two jobs, each a controller and its run
    if stop == "sigterm":
        proc.send_signal(signal.SIGTERM)
    else:  # Ctrl-C at a terminal: SIGINT to the foreground process group
        os.killpg(proc.pid, signal.SIGINT)
    code, output = finish(proc, timeout=60)
    if stop == "sigterm":
        assert code == 143, output
        assert "terminated by SIGTERM; resume with: tfkit ablate" in output and "--append" in output
    else:
        assert code == 130, output
        assert "interrupted; resume with: tfkit ablate" in output and "--append" in output
    assert [p for p in workers if alive(p)] == []  # the parent waited for them
    assert job_dirs(tmp_path) == []  # its job folder went with it
    df = pl.read_csv(tmp_path / "r.csv")
    last = df.group_by("run_id", maintain_order=True).last()
    assert last["run_status"].to_list() == ["interrupted", "interrupted"]  # stopped at a step boundary
    if stop == "ctrl-c":
        return  # resuming is the same for both

    resumed = ablate(tmp_path, *LONG, "--append")
    assert resumed.exit_code == 0, resumed.output
    assert "Re-running 2 unfinished runs" in resumed.output
    assert_each_run_once(tmp_path / "r.csv", 3)


def test_kill_9_of_the_parent_ends_its_workers(tmp_path, monkeypatch):
    proc = start(tmp_path, *LONG, "--jobs", "2")
    wait_for_runs(tmp_path / "r.csv", proc, 2)
    workers = workers_of(proc.pid)
    assert len(workers) == 4
    proc.kill()
    finish(proc)
    assert wait_until_gone(workers) == [], "workers outlived their parent"
    size = (tmp_path / "r.csv").stat().st_size
    time.sleep(0.5)
    assert (tmp_path / "r.csv").stat().st_size == size  # nobody writes any more
    last = pl.read_csv(tmp_path / "r.csv").group_by("run_id", maintain_order=True).last()
    assert last["run_status"].to_list() == ["interrupted", "interrupted"]  # stopped, not trained on as orphans
    assert [p.name.startswith(f"{socket.gethostname()}_{proc.pid}-") for p in job_dirs(tmp_path)] == [True]
    live = tmp_path / "runs" / "ablate" / ".jobs" / local_job_dir_name()  # a live process's folder stays
    other = tmp_path / "runs" / "ablate" / ".jobs" / "another-host_1-0"  # as is another machine's
    other.mkdir()
    live.mkdir()

    resumed = ablate(tmp_path, *LONG, "--append")
    assert resumed.exit_code == 0, resumed.output
    assert_each_run_once(tmp_path / "r.csv", 3)
    assert sorted(job_dirs(tmp_path)) == sorted([live, other])  # the dead ablation's job folder is cleaned up


def test_two_identical_ablations_appending_at_once_train_each_run_once(tmp_path):
    args = [*TINY, "--num-runs", "4", "--max-steps", "60", "--eval-every", "10", "-c", "--logfile", "r.csv", "--append"]
    first, second = start(tmp_path, *args), start(tmp_path, *args)
    (code1, out1), (code2, out2) = finish(first), finish(second)
    assert code1 == 0 and code2 == 0, out1 + out2
    assert_each_run_once(tmp_path / "r.csv", 4)
    trained = out1.count(" completed ") + out2.count(" completed ")
    assert trained == 4, out1 + out2


@pytest.mark.parametrize("keep_newline", [False, True], ids=["no-newline", "short-line"])
def test_a_cut_off_last_row_is_set_aside_and_its_run_trained_again(tmp_path, keep_newline):
    assert ablate(tmp_path, *SHORT).exit_code == 0
    path = tmp_path / "r.csv"
    complete = pl.read_csv(path)
    data = path.read_bytes()
    start_of_last = data.rstrip(b"\n").rfind(b"\n") + 1
    fragment = data[: start_of_last + (len(data) - start_of_last) // 2]
    fragment_bytes = fragment[start_of_last:] + (b"\n" if keep_newline else b"")
    path.write_bytes(fragment + (b"\n" if keep_newline else b""))
    torn_run = fragment_bytes.split(b",")[0].decode()

    result = ablate(tmp_path, *SHORT, "--append")
    assert result.exit_code == 0, result.output
    sides = list(tmp_path.glob("r.csv.torn-*"))
    assert len(sides) == 1 and sides[0].read_bytes() == fragment_bytes
    assert "its bytes are now in r.csv.torn-" in result.output and sides[0].name in result.output
    assert "Re-running 1 unfinished runs" in result.output and "Training 1 runs" in result.output
    df = assert_each_run_once(path, 2)
    assert df.height == complete.height
    again = df.filter(pl.col("run_id") == torn_run)["val_loss"].to_list()
    assert again == complete.filter(pl.col("run_id") == torn_run)["val_loss"].to_list()


def test_a_run_claimed_by_a_live_process_is_left_to_it(tmp_path):
    assert ablate(tmp_path, *SHORT).exit_code == 0
    path = tmp_path / "r.csv"
    df = pl.read_csv(path)
    busy = df["run_id"][0]
    # the run as another ablation would have it while it trains: rows so far, no final row yet
    lines = path.read_bytes().splitlines(keepends=True)
    last_of_busy = max(i for i, line in enumerate(lines) if line.startswith(busy.encode()))
    path.write_bytes(b"".join(lines[:last_of_busy] + lines[last_of_busy + 1 :]))
    before = path.read_bytes()
    claim = ResultsFile(path, []).claim(busy)
    assert claim is not None
    try:
        held = ablate(tmp_path, *SHORT, "--append")
        assert held.exit_code == 0, held.output
        assert "1 unfinished runs are running elsewhere" in held.output and "running elsewhere" in held.output
        assert path.read_bytes() == before  # its rows are neither dropped nor added to
    finally:
        claim.release()
    # once its holder is gone, the run is taken over
    taken = ablate(tmp_path, *SHORT, "--append")
    assert taken.exit_code == 0, taken.output
    assert "Re-running 1 unfinished runs" in taken.output
    assert_each_run_once(path, 2)


def test_overwrite_keeps_the_old_results_until_a_new_row_is_written(tmp_path, monkeypatch):
    victim = tmp_path / "victim.csv"
    victim.write_bytes(b"run_id,val_loss\nold-run,1.5\n")
    before = victim.read_bytes()
    args = [*TINY, "--max-steps", "5", "-c", "--logfile", "victim.csv", "--overwrite"]

    bad = ablate(tmp_path, *args, "--lr", "nan")
    assert bad.exit_code != 0
    assert victim.read_bytes() == before

    import tfkit.ablate.ablation

    def full_disk(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "runs"))

    monkeypatch.setattr(tfkit.ablate.ablation, "train_runs", full_disk)  # fails after the file is opened
    failed = ablate(tmp_path, *args)
    assert failed.exit_code == 2, failed.output
    assert victim.read_bytes() == before
    monkeypatch.undo()
    assert not list(tmp_path.glob(".victim.csv.replaced-*"))

    replaced = ablate(tmp_path, *args)
    assert replaced.exit_code == 0, replaced.output
    assert pl.read_csv(victim)["run_status"].to_list()[-1] == "completed"
    assert not list(tmp_path.glob(".victim.csv.replaced-*"))


def test_overwrite_killed_before_its_first_row_gives_the_old_file_back(tmp_path):
    path = tmp_path / "r.csv"
    path.write_bytes(b"run_id,run_status\nold,completed\n")
    before = path.read_bytes()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    # what an --overwrite killed by kill -9 before any row leaves: the old file moved aside
    os.replace(path, tmp_path / f".r.csv.replaced-{dead.pid}-0")
    path.write_bytes(b"run_id,run_status\n")
    ResultsFile.open(path, ["run_id", "run_status"], append=True, overwrite=False)
    assert path.read_bytes() == before
    assert not list(tmp_path.glob(".r.csv.replaced-*"))


def test_a_row_is_written_whole_or_not_at_all(tmp_path, monkeypatch):
    columns = ["run_id", "run_status", "note"]
    path = tmp_path / "r.csv"
    results = ResultsFile.open(path, columns, append=False, overwrite=False)
    results.append([{"run_id": "a", "run_status": "completed", "note": "x" * 100}])
    before = path.read_bytes()
    real_write = os.write

    def half_then_full(fd, data):
        real_write(fd, bytes(data[: len(data) // 2]))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", half_then_full)
    with pytest.raises(OSError, match="No space left"):
        results.append([{"run_id": "b", "run_status": "completed", "note": "y" * 100}])
    monkeypatch.undo()
    assert path.read_bytes() == before
    # a cut-off row left by a crash is set aside before the next append, never appended to
    path.write_bytes(before + b"c,runn")
    results.append([{"run_id": "d", "run_status": "completed", "note": ""}])
    assert pl.read_csv(path)["run_id"].to_list() == ["a", "d"]
    assert [p.read_bytes() for p in tmp_path.glob("r.csv.torn-*")] == [b"c,runn"]


def test_overwrite_trains_every_run_of_the_grid_afresh(tmp_path):
    args = [*TINY, "--num-runs", "2", "--max-steps", "20", "--eval-every", "10", "-c", "--logfile", "r.csv"]
    first = ablate(tmp_path, *args)
    assert first.exit_code == 0, first.output
    val_logs = sorted((tmp_path / "runs" / "ablate").glob("*/val_log.csv"))
    assert len(val_logs) == 2
    # stale results, as runs trained before a fix to the code or the data would have logged them
    for val_log in val_logs:
        stale = pl.read_csv(val_log).with_columns(pl.lit(9.5).alias("val_loss"))
        stale.write_csv(val_log)

    again = ablate(tmp_path, *args, "--overwrite")
    assert again.exit_code == 0, again.output
    df = assert_each_run_once(tmp_path / "r.csv", 2)
    assert df["val_loss"].max() < 5, df.select("run_id", "step", "val_loss")
    for val_log in val_logs:  # the runs were trained again from step 0, not resumed
        assert pl.read_csv(val_log)["val_loss"].max() < 5
        meta = json.loads((val_log.parent / "train_config.json").read_text())["meta"]
        assert "resumed" not in meta
    assert not list((tmp_path / "runs" / "ablate").glob("*/.*replaced*"))


def test_a_job_requeued_under_overwrite_resumes_its_own_run(tmp_path):
    from tfkit.ablate.run import resume_mode

    first = ablate(tmp_path, *TINY, "--max-steps", "10", "-c", "--logfile", "r.csv")
    assert first.exit_code == 0, first.output
    [run_dir] = (tmp_path / "runs" / "ablate").glob("*-s0")
    spec = _spec_for(tmp_path, run_dir)
    assert resume_mode(spec) == "auto"  # --append: a run continues
    replacing = dataclasses.replace(spec, overwrite_id="abc")
    assert resume_mode(replacing) is None  # --overwrite: an older run is replaced
    (run_dir / ".overwrite-id").write_text("abc\n")  # what this --overwrite's first attempt wrote
    assert resume_mode(replacing) == "auto"  # its requeued attempt continues it
    assert resume_mode(dataclasses.replace(spec, overwrite_id="def")) is None


def _spec_for(tmp_path: Path, run_dir: Path):
    from tfkit.ablate.grid import RunSpec, Setting
    from tfkit.config import RunConfig

    config = RunConfig().with_updates({"log.out": str(run_dir)})
    return RunSpec(Setting("x", {}, config), run_num=0, seed=0, run_id=run_dir.name, config=config)


def test_overwrite_is_refused_while_another_ablation_adds_rows(tmp_path):
    path = tmp_path / "r.csv"
    appending = start(
        tmp_path,
        *TINY,
        "--max-steps",
        "1500",
        "--eval-every",
        "50",
        "--lr",
        "0.02",
        "-c",
        "--logfile",
        "r.csv",
        "--append",
    )
    wait_for_runs(path, appending, 1)
    replacing = ablate(tmp_path, *TINY, "--max-steps", "20", "--lr", "0.001", "-c", "--logfile", "r.csv", "--overwrite")
    assert replacing.exit_code == 2, replacing.output
    assert "in use" in replacing.output
    assert len(replacing.output.strip().splitlines()) == 1, replacing.output
    code, output = finish(appending)
    assert code == 0, output
    df = assert_each_run_once(path, 1)
    assert df.height == 1500 // 50  # every evaluation of the appending ablation, the final one included
    # once it has ended, the file is free to replace
    replaced = ablate(tmp_path, *TINY, "--max-steps", "20", "--lr", "0.001", "-c", "--logfile", "r.csv", "--overwrite")
    assert replaced.exit_code == 0, replaced.output
    assert pl.read_csv(path)["lr"].to_list() == [0.001] * pl.read_csv(path).height


def test_a_job_holding_the_results_file_keeps_it_from_being_replaced(tmp_path):
    from tfkit.errors import ConfigError

    path = tmp_path / "r.csv"
    columns = ["run_id", "run_status"]
    ResultsFile.open(path, columns, append=False, overwrite=False).finish()
    path.write_bytes(b"run_id,run_status\na,running\n")
    job = ResultsFile(path, columns)
    job.use()  # as a job of another ablation holds it while it trains
    with pytest.raises(ConfigError, match="in use"):
        ResultsFile.open(path, columns, append=False, overwrite=True)
    assert path.read_bytes() == b"run_id,run_status\na,running\n"
    job.leave()
    ResultsFile.open(path, columns, append=False, overwrite=True).finish()


def test_ctrl_c_before_any_run_has_ended_exits_130_with_the_resume_command(tmp_path):
    proc = start(
        tmp_path,
        *TINY,
        "--lr",
        "0.001",
        "0.003",
        "--max-steps",
        "3000",
        "--eval-every",
        "50",
        "-c",
        "--logfile",
        "r.csv",
        "--jobs",
        "2",
    )
    wait_for_runs(tmp_path / "r.csv", proc, 2)  # both learning rates have rows, no run has ended
    os.killpg(proc.pid, signal.SIGINT)
    code, output = finish(proc, timeout=60)
    assert code == 130, output
    assert "Traceback" not in output
    assert "interrupted; resume with: tfkit ablate" in output


def test_a_full_disk_on_the_results_file_stops_the_grid_with_one_line(tmp_path, monkeypatch):
    import tfkit.ablate.results as results_module

    real_append = results_module.append_whole
    writes = []

    def disk_full_after_three_rows(fd, data, path):
        writes.append(data)
        if len(writes) > 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_append(fd, data, path)

    monkeypatch.setattr(results_module, "append_whole", disk_full_after_three_rows)
    args = [*TINY, "--lr", "0.001", "0.002", "0.003", "--max-steps", "40", "--eval-every", "10", "-c"]
    result = ablate(tmp_path, *args, "--logfile", "r.csv")
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert errors == [f"Error: could not write {Path('r.csv')}: No space left on device"], result.output
    assert len(list((tmp_path / "runs" / "ablate").iterdir())) == 1  # the grid stopped with its first run
    assert pl.read_csv(tmp_path / "r.csv").height == 3  # the rows written stay whole


@pytest.mark.parametrize("where", ["a file", "under a file"])
def test_a_runs_dir_that_cannot_hold_runs_is_refused_before_the_grid_starts(tmp_path, where):
    (tmp_path / "taken").write_text("a user's file\n")
    runs_dir = "taken" if where == "a file" else "taken/runs"
    result = ablate(tmp_path, *TINY, "--lr", "0.001", "0.002", "--max-steps", "5", "-c", "--runs-dir", runs_dir)
    assert result.exit_code == 2, result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    assert "taken" in result.output
    assert (tmp_path / "taken").read_text() == "a user's file\n"
    assert not (tmp_path / "results.csv").exists()


def test_a_run_killed_by_the_system_is_reported_with_the_cause(tmp_path):
    proc = start(
        tmp_path,
        *TINY,
        "--num-runs",
        "2",
        "--max-steps",
        "1500",
        "--eval-every",
        "50",
        "-c",
        "--logfile",
        "r.csv",
        "--jobs",
        "2",
    )
    wait_for_runs(tmp_path / "r.csv", proc, 2)
    controllers = children_of(proc.pid, b"tfkit.ablate.controller")
    victim = children_of(controllers[0], b"submitit.core._submit")[0]
    os.kill(victim, signal.SIGKILL)  # as the kernel's out-of-memory killer does
    code, output = finish(proc)
    assert code == 1, output
    assert "failed: job died: the run's process was killed by SIGKILL" in output, output


def test_runs_stopped_by_their_time_budget_are_named_with_the_command_that_continues_them(tmp_path):
    args = [*TINY, "--max-steps", "100000", "--max-time-seconds", "1", "--eval-every", "50", "-c", "--logfile", "r.csv"]
    first = ablate(tmp_path, *args)
    assert first.exit_code == 0, first.output
    assert "1 runs stopped at --max-time-seconds before their other limits; continue them with:" in first.output
    steps = pl.read_csv(tmp_path / "r.csv")["step"].max()
    again = ablate(tmp_path, *args, "--append")  # a resubmission: another second of training
    assert again.exit_code == 0, again.output
    df = pl.read_csv(tmp_path / "r.csv")
    assert df["step"].max() > steps
    assert df.filter(pl.col("run_status") != "running")["run_status"].to_list() == ["time_limit"]
