"""Launchers: the runs of an ablation as submitit jobs, on this machine or on a SLURM cluster.

The launchers submit the same job (`tfkit.ablate.jobs.RunJob`) through submitit:

- `local`: up to `--jobs` runs at once as local processes (submitit's local executor;
  each job is a controller process and its task). `--devices` are dealt to the jobs
  in turn. Ctrl-C or SIGTERM here is forwarded to the running jobs as SIGTERM: each
  stops at a step boundary with a checkpoint, and this process waits for them. The
  jobs end with this process even on kill -9 (`tfkit.ablate.controller`). Their logs
  and pickles are in `<runs-dir>/.jobs/<owner>/`, removed at the end unless a run
  failed there (then its log is named), or by the next ablation if this one was killed.
- `slurm`: every run as one SLURM job array (`tfkit.ablate.slurm`).

`run_jobs` deals the runs to a launcher's jobs and collects their outcomes.

Nothing here prints: progress goes to the ablation's callback.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

from tfkit.ablate.grid import RunSpec
from tfkit.ablate.processes import owner_alive, owner_tag
from tfkit.ablate.results import ResultsFile
from tfkit.errors import ConfigError, StorageError

LOCAL_JOBS_DIR = ".jobs"
NO_TIME_LIMIT_MIN = 60 * 24 * 365  # the local launcher's jobs are not timed out


class Launcher:
    """Submits jobs, tells when one has finished, and stops them; see the module docstring."""

    name = ""
    window = 1  # jobs submitted and not finished at once
    poll_s = 0.1
    folder: Path

    def submit(self, jobs: list[tuple[Any, int]]) -> list[Any]:
        """Submit `(RunJob, slot)` pairs; returns the submitit jobs in the same order."""
        raise NotImplementedError

    def poll(self) -> None:
        """Refresh what is known of the jobs, once per round of `finished` calls."""

    def stopped_on_cluster(self, job: Any) -> bool:
        """Whether something other than this ablation stopped the job (a cluster's scancel, a preemption)."""
        return False

    def finished(self, job: Any) -> bool:
        raise NotImplementedError

    def stop(self, jobs: list[Any], signum: int) -> None:
        raise NotImplementedError

    def close(self, failed: bool) -> None:
        """The ablation is over: clean up what need not be kept."""


def _local_executor_class() -> Any:
    """submitit's local executor, with jobs that end with this process (see `tfkit.ablate.controller`)."""
    import submitit
    from submitit.local.local import LocalJob

    class LocalExecutor(submitit.LocalExecutor):
        def _submit_command(self, command: str) -> Any:
            env = dict(os.environ)
            env.update(
                SUBMITIT_LOCAL_NTASKS="1",
                SUBMITIT_LOCAL_COMMAND=command,
                SUBMITIT_LOCAL_TIMEOUT_S=str(int(60 * self.parameters.get("timeout_min", NO_TIME_LIMIT_MIN))),
                SUBMITIT_LOCAL_SIGNAL_DELAY_S=str(int(self.parameters.get("signal_delay_s", 30))),
                SUBMITIT_LOCAL_NODEID="0",
                SUBMITIT_LOCAL_JOB_NUM_NODES="1",
                SUBMITIT_STDERR_TO_STDOUT="",
                SUBMITIT_EXECUTOR="local",
                SUBMITIT_LOCAL_WITH_SHELL="",
            )  # devices are named in each run's config: CUDA_VISIBLE_DEVICES is left as it is
            process = subprocess.Popen(
                [sys.executable, "-m", "tfkit.ablate.controller", str(self.folder), str(os.getpid())],
                env=env,
                start_new_session=True,  # a Ctrl-C at the terminal reaches the jobs only through `stop`
            )
            return LocalJob(folder=self.folder, job_id=str(process.pid), process=process, tasks=[0])

    return LocalExecutor


class LocalLauncher(Launcher):
    name = "local"

    def __init__(self, runs_dir: Path, jobs: int, devices: list[str] | None, timeout_min: float | None = None) -> None:
        remove_stale_job_dirs(runs_dir)
        self.folder = Path(runs_dir) / LOCAL_JOBS_DIR / local_job_dir_name()
        self.window = jobs
        self.devices = devices
        self.executor = _local_executor_class()(self.folder)
        self.executor.update_parameters(timeout_min=timeout_min or NO_TIME_LIMIT_MIN)

    def submit(self, jobs: list[tuple[Any, int]]) -> list[Any]:
        return [self.executor.submit(job) for job, _ in jobs]

    def finished(self, job: Any) -> bool:
        return job.done()

    def stop(self, jobs: list[Any], signum: int) -> None:
        for job in jobs:
            process = job._process
            if process is not None and process.poll() is None:
                with contextlib.suppress(OSError):
                    process.send_signal(signal.SIGTERM)  # the controller forwards it to the run

    def close(self, failed: bool) -> None:
        if not failed:
            shutil.rmtree(self.folder, ignore_errors=True)
            with contextlib.suppress(OSError):
                self.folder.parent.rmdir()  # only if no other ablation's folder is there


def local_job_dir_name(pid: int | None = None) -> str:
    """`<host>_<pid>-<start time>`: whose local job folder it is, also on a runs dir other machines share."""
    return f"{socket.gethostname()}_{owner_tag(pid)}"


def remove_stale_job_dirs(runs_dir: Path) -> list[Path]:
    """Remove the local job folders of ablations that ended without cleaning up (kill -9); returns them.

    Only this machine's: another machine's processes cannot be seen from here.
    """
    removed = []
    host = socket.gethostname()
    with contextlib.suppress(OSError):
        for path in (Path(runs_dir) / LOCAL_JOBS_DIR).iterdir():
            owner_host, _, tag = path.name.rpartition("_")
            if owner_host != host:
                continue
            if path.is_dir() and not path.is_symlink() and not owner_alive(tag):
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
    return removed


def read_outcome(job: Any, outcome_class: type) -> Any:
    """The `RunOutcome` a finished job returned, or None when it left none (or an error trace)."""
    import pickle

    try:
        with open(job.task(0).paths.result_pickle, "rb") as f:  # rank 0's, for a job of several tasks
            kind, value = pickle.load(f)
    except (OSError, EOFError, pickle.UnpicklingError, ValueError):
        return None
    if kind != "success" or not isinstance(value, dict):
        return None
    return outcome_class(**value)


def _last_error_line(job: Any) -> str:
    """The last line of a job's error log that says something (a traceback's last line)."""
    paths = job.task(0).paths
    for path in (paths.stderr, paths.stdout):
        with contextlib.suppress(OSError):
            lines = [line.strip() for line in path.read_text(errors="replace").splitlines()]
            said = [line for line in lines if line and not line.startswith("submitit ")]
            if said or lines:  # the controller's own line names a signal that killed the run
                return (said or [line for line in lines if line])[-1].removeprefix("tfkit: ")
    return f"no log at {paths.stderr}"


@contextlib.contextmanager
def _on_stop_signals(handler: Any) -> Any:
    """Route Ctrl-C and SIGTERM to `handler` (in the main thread; elsewhere nothing is installed)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            if old is not None:
                signal.signal(sig, old)


def run_jobs(
    specs: list[RunSpec],
    results: ResultsFile | None,
    launcher: Launcher,
    callback: Any,
    threads: int | None = None,
) -> Any:
    """Train `specs` as jobs of `launcher`, at most `launcher.window` at a time, in order.

    A run another live process holds is not submitted (`running elsewhere`); the job
    claims its run itself. Returns the ablation's `AblationResult`.
    """
    from tfkit.ablate.run import AblationResult

    loop = _JobLoop(specs, results, launcher, callback, threads)
    try:
        with _on_stop_signals(loop.forward):
            while loop.pending or loop.running:
                loop.submit_free_slots()
                launcher.poll()
                loop.collect_finished()
                if loop.stop.is_set():
                    loop.pending.clear()
                if results is not None:
                    results.settle()
                time.sleep(launcher.poll_s)
    finally:
        if loop.running and launcher.name == "local":  # only on an unexpected error: leave no orphan
            for job, _ in loop.running.values():
                with contextlib.suppress(OSError):
                    os.killpg(job._process.pid, signal.SIGKILL)
                    job._process.wait()
        launcher.close(loop.failed)
    if loop.results_error is not None:
        raise loop.results_error
    if loop.submit_error is not None:
        raise loop.submit_error
    stopped_by = (loop.stopped_by or [None])[0]
    return AblationResult(loop.outcomes, interrupted=loop.stop.is_set(), stopped_by=stopped_by)


class _JobLoop:
    """What `run_jobs` keeps between its rounds: the runs waiting, the jobs running, the outcomes."""

    def __init__(
        self, specs: list[RunSpec], results: ResultsFile | None, launcher: Launcher, callback: Any, threads: int | None
    ) -> None:
        self.pending = deque(specs)
        self.running: dict[int, tuple[Any, RunSpec]] = {}  # slot -> (job, spec)
        self.outcomes: list[Any] = []
        self.stop = threading.Event()
        self.stopped_by: list[str] = []
        self.failed = False
        self.submit_error: ConfigError | None = None
        self.results_error: StorageError | None = None  # the results file failed in a job: the ablation stops
        self.results, self.launcher, self.callback, self.threads = results, launcher, callback, threads
        self.devices = getattr(launcher, "devices", None)
        self.results_arg = None if results is None else (str(results.path.absolute()), results.columns)

    def forward(self, signum: int, frame: Any) -> None:
        """Ctrl-C or SIGTERM here: the running jobs are told to stop at a step boundary."""
        self.stop.set()
        self.stopped_by.append(signal.Signals(signum).name)
        self.stop_running(signum)

    def stop_running(self, signum: int = signal.SIGTERM) -> None:
        self.launcher.stop([job for job, _ in self.running.values()], signum)

    def submit_free_slots(self) -> None:
        """Submit the next runs into the free slots, passing over runs another process trains."""
        from tfkit.ablate.jobs import RunJob
        from tfkit.ablate.run import RunOutcome, with_device

        batch: list[tuple[Any, int]] = []
        specs: list[RunSpec] = []
        window = min(self.launcher.window, len(self.pending) + len(self.running))
        free = [slot for slot in range(window) if slot not in self.running]
        while self.pending and free and not self.stop.is_set():
            spec = self.pending.popleft()
            if self.results is not None and self.results.claimed_elsewhere({spec.run_id}):
                skipped = RunOutcome(spec.run_id, "skipped", message="running elsewhere")
                self.outcomes.append(skipped)
                self.callback.on_run_end(spec, skipped)
                continue
            slot = free.pop(0)
            spec = with_device(spec, self.devices[slot % len(self.devices)] if self.devices else None)
            batch.append((RunJob(spec, self.results_arg, self.threads, os.getcwd()), slot))
            specs.append(spec)
        if not batch:
            return
        try:
            jobs = self.launcher.submit(batch)
        except Exception as e:  # sbatch failed (or a Ctrl-C at the terminal reached it too)
            if not self.stop.is_set():  # the runs started stop at a step boundary, then this is raised
                self.submit_error = ConfigError(f"could not submit the runs: {e}")
            self.stop.set()
            self.stop_running()
            return
        for job, spec, (_, slot) in zip(jobs, specs, batch, strict=True):
            self.running[slot] = (job, spec)
            self.callback.on_run_start(spec)
        if self.stop.is_set():  # a signal came while they were submitted
            self.stop_running()

    def collect_finished(self) -> None:
        """The outcome of every job that has finished; a fatal one, or a local run stopped by a signal, stops all."""
        for slot, (job, spec) in list(self.running.items()):
            if not self.launcher.finished(job):
                continue
            del self.running[slot]
            outcome = self.outcome_of(job, spec)
            self.failed = self.failed or outcome.status == "error"
            self.outcomes.append(outcome)
            self.callback.on_run_end(spec, outcome)
            if outcome.fatal and self.results_error is None:
                self.results_error = StorageError(outcome.message or "the results file could not be written")
                self.stop.set()
                self.stop_running()
            if outcome.status == "interrupted" and self.launcher.name == "local" and not self.stop.is_set():
                self.stop.set()  # a run stopped by a signal sent to it: the ablation stops too
                self.stopped_by.append(outcome.stopped_by or "SIGINT")
                self.stop_running()

    def outcome_of(self, job: Any, spec: RunSpec) -> Any:
        """What a finished job returned, or what can be said of it when it returned nothing."""
        from tfkit.ablate.run import RunOutcome

        outcome = read_outcome(job, RunOutcome)
        if outcome is not None and outcome.run_id != spec.run_id:
            outcome = None  # another job's (a reused job id): not this run's
        with contextlib.suppress(OSError):
            job.task(0).paths.result_pickle.unlink()  # read once: never taken for a later job's
        if outcome is not None:
            return outcome
        if self.stop.is_set():  # stopped before it could say so
            return RunOutcome(spec.run_id, "interrupted", message="stopped", stopped_by="SIGTERM")
        if self.launcher.stopped_on_cluster(job):
            message = "cancelled or preempted on the cluster"
            return RunOutcome(spec.run_id, "interrupted", message=message, stopped_by="SIGTERM")
        log = job.task(0).paths.stderr
        return RunOutcome(spec.run_id, "error", message=f"job died: {_last_error_line(job)} (log: {log})")
