"""`tfkit ablate --launcher local|slurm`: runs as submitit jobs, locally and on a (fake) SLURM cluster.

The SLURM tests run the real `tfkit ablate` against fake sbatch / srun / sacct / scancel /
scontrol executables on PATH (`tests/ablate/fake_slurm.py`), which run the submitted
script on this machine with the environment a SLURM job has. So the script submitit
writes, its array, the timeout signal, `scontrol requeue` and `scancel` are all exercised
as on a cluster; only the scheduler is a stand-in.

`tests/slurm/` runs the SLURM paths on a real one-node cluster (`scripts/slurm-local`): the
array, the time-limit requeue, preemption, `scancel` and Ctrl-C, a two-task DDP job. The
fake tests here are for what that cluster is not: the sbatch options of a cluster with a
`gpu` partition and a QoS (the array test), a partition that preempts by cancelling (the
preempted-for-good test), and a pending array task that a hand `scancel` stops before it
starts (the cancelled-by-hand test).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from tests.ablate import fake_slurm
from tests.processes import children_of
from tfkit.cli.app import app

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc; POSIX signals"),
]

runner = CliRunner()
TINY = [
    "--depth",
    "1",
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
GRID = [*TINY, "--width", "16", "32", "--num-runs", "2", "--max-steps", "30", "--eval-every", "10"]
# one run long enough to be signalled while it trains
LONG = [*TINY, "--width", "16", "--max-steps", "600", "--eval-every", "50", "-c", "--logfile", "r.csv"]


@pytest.fixture
def slurm(tmp_path: Path) -> dict[str, str]:
    """The environment of a machine where sbatch and friends are the fake ones.

    submitit caches job states in a class-level watcher: cleared, so job ids the fake gives
    again in another test are asked about afresh. A test that hangs is stopped after 4
    minutes, and every process of the fake jobs is killed at the end.
    """
    from submitit.slurm.slurm import SlurmJob

    bin_dir, state = tmp_path / "fake-bin", tmp_path / "fake-slurm"
    fake_slurm.install(bin_dir, state)
    SlurmJob.watcher.clear()
    SlurmJob.watcher._registered = set()
    previous = signal.signal(signal.SIGALRM, _too_long)
    signal.alarm(240)
    try:
        yield {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "FAKE_SLURM_DIR": str(state)}
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
        for pid_file in state.glob("*.runner.pid"):
            with contextlib.suppress(OSError, ValueError):
                os.killpg(int(pid_file.read_text()), signal.SIGKILL)


def _too_long(signum: int, frame: object) -> None:
    raise TimeoutError("the fake SLURM test ran past 4 minutes")


def environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    return {**os.environ, "COLUMNS": "200", "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1", **(extra or {})}


def ablate(tmp_path: Path, *args: str, env: dict[str, str] | None = None):
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        return runner.invoke(app, ["ablate", *args], env={"COLUMNS": "200", "OMP_NUM_THREADS": "1", **(env or {})})
    finally:
        os.chdir(cwd)


def start(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    """`tfkit ablate` in its own session, as a terminal starts it: a Ctrl-C goes to its process group."""
    return subprocess.Popen(
        [sys.executable, "-m", "tfkit", "ablate", *args],
        cwd=tmp_path,
        env=environment(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def finish(proc: subprocess.Popen, timeout: float = 120) -> tuple[int, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out + err


def wait_for_rows(path: Path, proc: subprocess.Popen, rows: int, runs: int = 1) -> None:
    """Wait until the results file has `rows` rows from at least `runs` runs."""

    def enough() -> bool:
        lines = path.read_bytes().splitlines()[1:] if path.exists() else []
        return len(lines) >= rows and len({line.split(b",")[0] for line in lines}) >= runs

    deadline = time.time() + 90
    while not enough():
        assert proc.poll() is None, finish(proc)[1]
        assert time.time() < deadline, "no results rows in time"
        time.sleep(0.05)


def finals(path: Path) -> pl.DataFrame:
    """Each run's last row, after checking that every run has one completed row per evaluation."""
    df = pl.read_csv(path)
    assert df.select("run_id", "step").is_duplicated().sum() == 0, df.select("run_id", "step", "run_status")
    last = df.group_by("run_id", maintain_order=True).last().sort("run_id")
    assert set(last["run_status"]) == {"completed"}, last.select("run_id", "run_status")
    return last


def test_slurm_launcher_submits_one_array_and_every_run_comes_back(tmp_path, slurm):
    options = [
        "--slurm-partition",
        "gpu",
        "--gpus-per-run",
        "1",
        "--slurm-time",
        "120",
        "--jobs",
        "2",
        "--slurm-option",
        "qos=high",
        "--slurm-setup",
        "export TFKIT_SETUP_RAN=1",
    ]
    result = ablate(tmp_path, *GRID, "-c", "--logfile", "slurm.csv", "--launcher", "slurm", *options, env=slurm)
    assert result.exit_code == 0, result.output
    assert "Training 4 runs (2 settings x 2 seeds, 2 at a time) on SLURM" in result.output

    scripts = list((tmp_path / "fake-slurm").glob("*.sh"))
    assert len(scripts) == 1  # one submission: an array of the 4 runs, 2 at a time
    script = scripts[0].read_text()
    for line in (
        "--array=0-3%2",
        "--partition=gpu",
        "--gpus-per-node=1",
        "--time=120",
        "--signal=USR2@90",
        "--requeue",
        "--qos=high",
        "--job-name=tfkit-slurm",
    ):
        assert f"#SBATCH {line}\n" in script, script
    assert "export TFKIT_SETUP_RAN=1\n" in script and "submitit.core._submit" in script
    logs = tmp_path / "runs" / "ablate" / "slurm"
    assert len(list(logs.glob("*_log.out"))) == 4  # kept, one per run

    # the same runs trained here give the same numbers: the jobs trained exactly these runs
    here = ablate(tmp_path, *GRID, "-c", "--logfile", "here.csv", "--runs-dir", "runs/here")
    assert here.exit_code == 0, here.output
    on_slurm, local = finals(tmp_path / "slurm.csv"), finals(tmp_path / "here.csv")
    assert on_slurm.height == 4
    assert on_slurm["run_id"].to_list() == local["run_id"].to_list()
    assert on_slurm["val_loss"].to_list() == local["val_loss"].to_list()

    again = ablate(tmp_path, *GRID, "-c", "--logfile", "slurm.csv", "--append", "--launcher", "slurm", env=slurm)
    assert again.exit_code == 0 and "All 4 runs are done" in again.output
    assert len(list((tmp_path / "fake-slurm").glob("*.sh"))) == 1  # nothing submitted


def test_a_job_preempted_for_good_is_not_waited_for_forever(tmp_path, slurm, monkeypatch):
    """PreemptMode=CANCEL: the job gets SIGTERM and stays PREEMPTED; the ablation says so and ends."""
    import threading

    from tfkit.ablate import slurm as slurm_launcher

    monkeypatch.setattr(slurm_launcher, "PREEMPTED_FINAL_S", 0.0)

    def preempt() -> None:
        deadline = time.time() + 60
        results = tmp_path / "r.csv"
        while time.time() < deadline and (not results.exists() or len(results.read_bytes().splitlines()) < 3):
            time.sleep(0.05)
        fake = [sys.executable, fake_slurm.__file__, "_preempt", "100"]
        subprocess.run(fake, env=environment(slurm), check=True)

    threading.Thread(target=preempt, daemon=True).start()
    result = ablate(tmp_path, *LONG, "--launcher", "slurm", env=slurm)
    assert result.exit_code == 1, result.output
    assert "1 runs were stopped before they finished (cancelled or preempted)" in result.output
    assert "resume with:" in result.output and "--append" in result.output
    assert pl.read_csv(tmp_path / "r.csv")["run_status"][-1] == "interrupted"  # at a step boundary


def test_a_job_cancelled_by_hand_is_a_stopped_run_not_an_error(tmp_path, slurm):
    """`scancel` on the cluster: the running job stops at a step boundary, the pending one never starts."""
    args = [*TINY, "--width", "16", "32", "--max-steps", "2000", "--eval-every", "50", "-c", "--logfile", "r.csv"]
    proc = start(tmp_path, *args, "--launcher", "slurm", "--jobs", "1", env=slurm)
    wait_for_rows(tmp_path / "r.csv", proc, 2)
    subprocess.run(["scancel", "100"], env=environment(slurm), check=True)
    code, output = finish(proc)
    assert code == 1, output
    assert "2 runs were stopped before they finished (cancelled or preempted)" in output, output
    assert "failed" not in output and "--append" in output
    df = pl.read_csv(tmp_path / "r.csv")
    assert df["run_id"].n_unique() == 1 and df["run_status"][-1] == "interrupted"


def test_local_launcher_requeues_a_run_on_the_timeout_signal(tmp_path):
    proc = start(tmp_path, *LONG, "--launcher", "local")
    wait_for_rows(tmp_path / "r.csv", proc, 2)
    task = job_processes(proc.pid)[1]
    os.kill(task, signal.SIGUSR2)  # what the local controller sends before a job's time limit
    code, output = finish(proc)
    assert code == 0, output
    assert not (tmp_path / "runs" / "ablate" / ".jobs").exists()  # the job folder went with it
    run_dir = next(p for p in (tmp_path / "runs" / "ablate").iterdir() if p.is_dir())
    assert resumed_from(run_dir) > 0  # requeued: the second attempt continued from the stop's checkpoint

    here = ablate(tmp_path, *LONG[:-1], "here.csv", "--runs-dir", "runs/here")
    assert here.exit_code == 0, here.output
    requeued, straight = pl.read_csv(tmp_path / "r.csv"), pl.read_csv(tmp_path / "here.csv")
    assert requeued["val_loss"].to_list() == straight["val_loss"].to_list()
    finals(tmp_path / "r.csv")


def resumed_from(run_dir: Path) -> int:
    """The step a run was last resumed from (0: it was never resumed)."""
    import json

    resumed = json.loads((run_dir / "train_config.json").read_text())["meta"].get("resumed") or []
    return resumed[-1]["step"] if resumed else 0


def job_processes(parent: int) -> list[int]:
    """The local launcher's first job under `parent`: [its controller, the run's process]."""
    deadline = time.time() + 30
    while time.time() < deadline:
        for controller in children_of(parent, b"tfkit.ablate.controller"):
            tasks = children_of(controller, b"submitit.core._submit")
            if tasks:
                return [controller, tasks[0]]
        time.sleep(0.05)
    raise AssertionError("no job process found")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--slurm-partition", "gpu"], "--slurm-partition applies to SLURM jobs: add --launcher slurm"),
        (["--gpus-per-run", "1", "--launcher", "local"], "--gpus-per-run applies to SLURM jobs"),
        (["--launcher", "slurm", "--devices", "cpu"], "with --launcher slurm ask for GPUs with --gpus-per-run"),
        (["--launcher", "slurm", "--gpus-per-run", "-1"], "--gpus-per-run must be at least 0"),
        (["--launcher", "slurm", "--slurm-time", "0"], "--slurm-time must be at least 1"),
        (["--launcher", "slurm", "--slurm-option", "=x"], "expected an sbatch option"),
        (["--launcher", "slurm"], "--launcher slurm needs sbatch and srun on PATH"),
    ],
)
def test_bad_launcher_options_are_one_line_and_exit_2(tmp_path, args, message):
    empty = tmp_path / "no-slurm-here"  # PATH: no sbatch, even on a machine that has one
    empty.mkdir()
    result = ablate(tmp_path, *TINY, "--max-steps", "5", "-c", "--logfile", "r.csv", *args, env={"PATH": str(empty)})
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["no-slurm-here"]  # nothing written
