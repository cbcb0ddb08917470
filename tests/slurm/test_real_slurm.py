"""`tfkit ablate --launcher slurm` against a real SLURM cluster (see conftest.py; skipped without one).

The same commands a user types, with real sbatch, srun, sacct, squeue, scancel and scontrol:
a job array, the time-limit signal and SLURM's requeue, preemption by a higher-priority
partition, `scancel` by hand, Ctrl-C of the ablation, CPU jobs, a job of two DDP tasks, a
suspended job, and a cluster whose accounting is off.
Runs are tiny (a 1-layer model on mess3, a few hundred steps) so each job is seconds; most
of the time is SLURM's (a requeued job waits for its credential to expire) and importing torch.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import polars as pl
import pytest

from tests.ablate.test_launchers import ablate, finals, finish, start, wait_for_rows
from tests.slurm.conftest import Cluster, job_ids

pytestmark = [
    pytest.mark.slurm,
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SLURM runs on Linux"),
]

TINY = [
    *["--data", "mess3", "--depth", "1", "--num-heads", "2", "--seq-len", "10", "--batch-size", "4"],
    *["--device", "cpu", "--set", "data.train_sequences=256", "--set", "data.val_examples=32"],
]
GRID = [*TINY, "--width", "16", "32", "--num-runs", "2", "--max-steps", "30", "--eval-every", "10"]
# runs long enough to be signalled while they train (a few seconds; 1000 steps can take one): the
# tests act once the first evaluation's row is written, a tenth of the way
STEPS = ["--max-steps", "4000", "--eval-every", "200", "-c", "--logfile", "r.csv"]
LONG = [*TINY, "--width", "32", *STEPS]
TWO_LONG = [*TINY, "--width", "16", "32", *STEPS]
CPU_JOBS = ["--launcher", "slurm", "--gpus-per-run", "0"]
FINAL_STATES = ("COMPLETED", "CANCELLED", "FAILED", "TIMEOUT", "PREEMPTED", "OUT_OF_MEMORY", "NODE_FAIL")


@pytest.fixture(scope="module")
def straight(tmp_path_factory: pytest.TempPathFactory) -> pl.DataFrame:
    """The LONG run trained in this process, without a break: what a requeued run must equal."""
    import torch

    here = tmp_path_factory.mktemp("straight")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = ablate(here, *LONG)
    finally:
        torch.set_num_threads(threads)
    assert result.exit_code == 0, result.output
    finals(here / "r.csv")
    return pl.read_csv(here / "r.csv")


def slurm_run(conf: str, *args: str, check: bool = True) -> str:
    env = {**os.environ, "SLURM_CONF": conf}
    return subprocess.run(list(args), env=env, capture_output=True, text=True, check=check).stdout


def sacct_rows(job: str, conf: str, *, count: int, history: bool = True) -> list[list[str]]:
    """sacct's JobID, State, Start and End of `job`, one row per attempt with `-D`.

    sacct lags: a job whose result is written may still be RUNNING there for seconds, so
    this waits (up to 30 s) until `count` rows are there, all final.
    """
    args = ["sacct", "-n", "-X", "-P", "-o", "JobID,State,Start,End", "-j", job, *(["-D"] if history else [])]
    deadline = time.time() + 30
    while True:
        rows = [line.split("|") for line in slurm_run(conf, *args, check=False).splitlines() if line.strip()]
        final = all(row[1].startswith(FINAL_STATES) for row in rows)
        if (len(rows) >= count and final) or time.time() > deadline:
            return rows
        time.sleep(0.5)


def states(rows: list[list[str]]) -> list[str]:
    return [row[1].split()[0] for row in rows]  # "CANCELLED by 0" -> CANCELLED


def job_logs(tmp_path: Path, suffix: str) -> str:
    return "".join(p.read_text() for p in sorted((tmp_path / "runs" / "ablate" / "slurm").glob(f"*_log.{suffix}")))


def last_step(path: Path, status: str | None = None) -> int:
    """The highest step in the results file (of rows with `status`), 0 before any."""
    if not path.exists() or len(path.read_bytes().splitlines()) < 2:
        return 0
    df = pl.read_csv(path)
    if status is not None:
        df = df.filter(pl.col("run_status") == status)
    return int(df["step"].max() or 0)


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 90) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, f"{what}: not in {timeout} s"
        time.sleep(0.05)


def ablate_while(tmp_path: Path, args: list[str], env: dict[str, str], drive: Callable[[], None]):
    """`tfkit ablate` in this process while `drive` (in a thread) acts on its jobs; its errors fail the test."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            drive()
        except BaseException as e:
            errors.append(e)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    result = ablate(tmp_path, *args, env=env)
    thread.join(timeout=10)
    assert not errors, errors
    return result


def test_an_array_of_four_cpu_runs_two_at_a_time_equals_the_grid_trained_here(tmp_path, slurm: Cluster):
    result = ablate(tmp_path, *GRID, "-c", "--logfile", "slurm.csv", *CPU_JOBS, "--jobs", "2", env=slurm.env())
    assert result.exit_code == 0, result.output
    assert "Training 4 runs (2 settings x 2 seeds, 2 at a time) on SLURM" in result.output

    ids = job_ids(tmp_path)
    array = ids[0].split("_")[0]
    assert ids == [f"{array}_{task}" for task in range(4)]  # one array of 4
    script = next((tmp_path / "runs" / "ablate" / "slurm").glob("*_submission.sh")).read_text()
    assert "#SBATCH --array=0-3%2\n" in script and "gpus" not in script  # CPU jobs: no GPU asked for
    rows = sacct_rows(array, slurm.conf, count=4, history=False)
    assert states(rows) == ["COMPLETED"] * 4, rows
    spans = [(start, end) for _, _, start, end in rows]
    assert max(sum(s <= t < e for s, e in spans) for t, _ in spans) <= 2, rows  # %2: at most 2 at once

    here = ablate(tmp_path, *GRID, "-c", "--logfile", "here.csv", "--runs-dir", "runs/here")
    assert here.exit_code == 0, here.output
    on_slurm, local = finals(tmp_path / "slurm.csv"), finals(tmp_path / "here.csv")
    assert on_slurm.height == 4
    assert on_slurm["run_id"].to_list() == local["run_id"].to_list()
    assert on_slurm["val_loss"].to_list() == local["val_loss"].to_list()  # bit for bit


def test_a_run_timed_out_then_preempted_is_requeued_each_time_and_equals_an_unbroken_run(
    tmp_path, slurm: Cluster, straight: pl.DataFrame
):
    """The time-limit signal, SLURM's requeue, then preemption by a higher partition: the run comes back twice."""
    if slurm.preemptor is None:
        pytest.skip(f"the cluster has no partition that preempts {slurm.default} by requeueing")
    cpus = str(slurm.cpus)  # the whole node: the job on the higher partition needs this one's CPUs
    results = tmp_path / "r.csv"
    proc = start(tmp_path, *LONG, *CPU_JOBS, "--slurm-cpus", cpus, env=slurm.env())
    wait_for_rows(results, proc, 1)
    (job,) = job_ids(tmp_path)
    slurm_run(slurm.conf, "scancel", "--signal", "USR2", job)  # what --signal=USR2@90 sends before the limit
    wait_until(lambda: job_logs(tmp_path, "out").count("Starting with JobEnvironment") == 2, "the requeued job")
    stopped_at = last_step(results)
    wait_until(lambda: last_step(results) > stopped_at or proc.poll() is not None, "the resumed run's rows")
    high = ["sbatch", "--partition", slurm.preemptor, "--cpus-per-task", cpus, "--output", "/dev/null"]
    slurm_run(slurm.conf, *high, "--wrap", "true", "--chdir", str(tmp_path))
    code, output = finish(proc, timeout=150)
    assert code == 0, output
    assert "completed" in output

    # SLURM requeued the job (SIGTERM, PENDING, run again), then preempted it (the same)
    assert states(sacct_rows(job, slurm.conf, count=3)) == ["REQUEUED", "PREEMPTED", "COMPLETED"]
    log = job_logs(tmp_path, "out")
    assert log.count("Starting with JobEnvironment") == 3, log
    # the requeue's SIGTERM came to a job that had already stopped: submitit's requeue ends as it should
    assert "Requeued job" in log and "Exiting gracefully after preemption/timeout" in log, log
    errors = job_logs(tmp_path, "err")
    assert "Traceback" not in errors, errors

    run_dir = next(p for p in (tmp_path / "runs" / "ablate").iterdir() if (p / "train_log.csv").exists())
    train_log = pl.read_csv(run_dir / "train_log.csv")
    assert train_log["step"].is_duplicated().sum() == 0 and train_log["step"].max() == 4000
    assert len(resumed(run_dir)) == 2  # each time from the checkpoint the stop saved, at a step boundary
    finals(results)  # each evaluation's row once, and the run completed
    requeued = pl.read_csv(results)
    assert requeued["step"].to_list() == straight["step"].to_list()
    assert requeued["val_loss"].to_list() == straight["val_loss"].to_list()  # bit for bit


def test_scancel_by_hand_and_ctrl_c_stop_the_runs_and_append_finishes_them(tmp_path, slurm: Cluster):
    results = tmp_path / "r.csv"
    proc = start(tmp_path, *TWO_LONG, *CPU_JOBS, "--jobs", "2", env=slurm.env())
    wait_for_rows(results, proc, 2, runs=2)  # one from each
    first, second = job_ids(tmp_path)
    slurm_run(slurm.conf, "scancel", first)  # by hand, on the cluster: its run stops, the ablation goes on
    wait_until(lambda: last_step(results, "interrupted") > 0, "the cancelled run's last row")
    assert proc.poll() is None, finish(proc)[1]
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C at the terminal: the ablation cancels its jobs
    code, output = finish(proc)
    assert code == 130, output
    assert "interrupted; resume with: tfkit ablate" in output and "--launcher slurm" in output
    assert states(sacct_rows(first.split("_")[0], slurm.conf, count=2, history=False)) == ["CANCELLED"] * 2
    last = pl.read_csv(results).group_by("run_id").last()
    assert last.height == 2 and set(last["run_status"]) == {"interrupted"}  # each at a step boundary

    resumed_ = ablate(tmp_path, *TWO_LONG, *CPU_JOBS, "--jobs", "2", "--append", env=slurm.env())
    assert resumed_.exit_code == 0, resumed_.output
    assert "Re-running 2 unfinished runs" in resumed_.output
    assert finals(results).height == 2


def test_a_run_on_two_gpus_is_one_job_of_two_ddp_tasks(tmp_path, slurm: Cluster):
    """--gpus-per-run 2: two tasks (gloo on the CPU) train one run with the global batch of both."""
    if slurm.gpus < 2:
        pytest.skip("the cluster's node has fewer than 2 GPUs (scripts/slurm-local's has 2 stand-ins)")
    unbatched = [a for i, a in enumerate(TINY) if "--batch-size" not in TINY[max(0, i - 1) : i + 1]]
    args = [*unbatched, "--width", "32", "--max-steps", "40", "--eval-every", "20", "-c"]
    two_gpus = ["--launcher", "slurm", "--gpus-per-run", "2"]
    result = ablate(tmp_path, *args, "--batch-size", "4", "--logfile", "two.csv", *two_gpus, env=slurm.env())
    assert result.exit_code == 0, result.output
    script = next((tmp_path / "runs" / "ablate" / "slurm").glob("*_submission.sh")).read_text()
    assert "#SBATCH --ntasks-per-node=2\n" in script and "#SBATCH --gpus-per-node=2\n" in script
    one = ablate(tmp_path, *args, "--batch-size", "8", "--logfile", "one.csv", "--runs-dir", "runs/one")
    assert one.exit_code == 0, one.output
    two, single = pl.read_csv(tmp_path / "two.csv"), pl.read_csv(tmp_path / "one.csv")
    assert two.height == single.height == 2 and two["run_status"].to_list() == ["running", "completed"]
    assert two["val_loss"].to_list() == pytest.approx(single["val_loss"].to_list(), rel=1e-5)
    run_dir = tmp_path / two["run_dir"][0]
    assert pl.read_csv(run_dir / "train_log.csv")["global_batch_size"].to_list()[-1] == 8
    logs = sorted(p.name for p in (tmp_path / "runs" / "ablate" / "slurm").glob("*_log.out"))
    assert [name.rsplit("_", 2)[-2] for name in logs] == ["0", "1"]  # one log per task


def test_a_suspended_job_is_waited_for_not_taken_for_dead(tmp_path, slurm: Cluster, monkeypatch):
    """`scontrol suspend` stops a job's processes; the ablation waits until it is resumed and finishes."""
    from tfkit.ablate import slurm as slurm_launcher

    monkeypatch.setattr(slurm_launcher, "SACCT_EVERY_S", 1.0)  # the cluster sees the suspension at once
    monkeypatch.setattr(slurm_launcher, "KILL_WAIT_S", 1.0)  # an ended job would be given up on quickly
    results = tmp_path / "r.csv"

    def suspend_then_resume() -> None:
        wait_until(lambda: last_step(results) > 0, "the run's rows")
        (job,) = job_ids(tmp_path)
        slurm_run(slurm.conf, "scontrol", "suspend", job)
        state = ["sacct", "-n", "-X", "-P", "-o", "State", "-j", job]
        wait_until(lambda: slurm_run(slurm.conf, *state).strip() == "SUSPENDED", "sacct's SUSPENDED")
        time.sleep(4)  # several of the ablation's looks at the cluster
        slurm_run(slurm.conf, "scontrol", "resume", job)

    result = ablate_while(tmp_path, [*LONG, *CPU_JOBS], slurm.env(), suspend_then_resume)
    assert result.exit_code == 0, result.output
    assert finals(results).height == 1


def test_with_accounting_off_a_job_cancelled_by_hand_still_ends_the_ablation(tmp_path, slurm: Cluster, monkeypatch):
    """sacct fails on a cluster without accounting: squeue tells that the job was cancelled."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    sacct = bin_dir / "sacct"  # what sacct answers where AccountingStorageType is none
    sacct.write_text("#!/bin/sh\necho 'sacct: error: Slurm accounting storage is disabled' >&2\nexit 1\n")
    sacct.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    results = tmp_path / "r.csv"

    def cancel() -> None:
        wait_until(lambda: last_step(results) > 0, "the run's rows")
        slurm_run(slurm.conf, "scancel", *job_ids(tmp_path))

    signal.alarm(90)  # without an answer from sacct the ablation would wait forever
    result = ablate_while(tmp_path, [*LONG, *CPU_JOBS], slurm.env(), cancel)
    assert result.exit_code == 1, (result.output, result.exception)
    assert "1 runs were stopped before they finished (cancelled or preempted)" in result.output
    assert "failed" not in result.output and "--append" in result.output
    assert pl.read_csv(results)["run_status"][-1] == "interrupted"


def resumed(run_dir: Path) -> list[dict]:
    """Where a run was resumed, each time."""
    import json

    return json.loads((run_dir / "train_config.json").read_text())["meta"].get("resumed") or []
