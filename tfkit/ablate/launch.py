"""Launchers: the runs of an ablation as submitit jobs, on this machine or on a SLURM cluster.

Both launchers submit the same job (`tfkit.ablate.jobs.RunJob`) through submitit:

- `local`: up to `--jobs` runs at once as local processes (submitit's local executor;
  each job is a controller process and its task). `--devices` are dealt to the jobs
  in turn. Ctrl-C or SIGTERM here is forwarded to the running jobs as SIGTERM: each
  stops at a step boundary with a checkpoint, and this process waits for them. The
  jobs end with this process even on kill -9 (`tfkit.ablate.controller`). Their logs
  and pickles are in `<runs-dir>/.jobs/<owner>/`, removed at the end unless a run
  failed there (then its log is named), or by the next ablation if this one was killed.
- `slurm`: every run is submitted at once as one job array (`--jobs` caps how many run
  at once), with `--signal=USR2@90` (stop, checkpoint and requeue before the time
  limit) and `--requeue` (a preempted job comes back and resumes). Logs are kept in
  `<runs-dir>/slurm/`. Ctrl-C here cancels the jobs (`scancel`): they stop at a step
  boundary. If this process ends any other way the jobs go on, and their rows still
  reach the results file, which every job appends to itself.

Nothing here prints: progress goes to the ablation's callback.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tfkit.ablate.defaults import DEFAULT_GPUS_PER_RUN, DEFAULT_TIME_MIN
from tfkit.ablate.grid import RunSpec
from tfkit.ablate.processes import owner_alive, owner_tag
from tfkit.ablate.results import ResultsFile
from tfkit.errors import ConfigError, StorageError

LOCAL_JOBS_DIR = ".jobs"
NO_TIME_LIMIT_MIN = 60 * 24 * 365  # the local launcher's jobs are not timed out
STOP_WAIT_S = 300.0  # after a Ctrl-C, how long to wait for cancelled SLURM jobs to end
KILL_WAIT_S = 60.0  # how long a cancelled job that was running may take to stop (SLURM's KillWait is 30 s)
PREEMPTED_FINAL_S = 600.0  # a job PREEMPTED this long is not being requeued
SACCT_EVERY_S = 30.0  # how often the cluster is asked about running jobs (one sacct for all)
# the states of a job that is not over: it runs, waits or will run again (a requeue, a resume)
UNFINISHED_STATES = frozenset(
    {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "PREEMPTED"}
    | {"SUSPENDED", "STOPPED", "RESIZING", "SIGNALING", "STAGE_OUT", "RESV_DEL_HOLD", "READY", "UNKNOWN"}
)
ARRAY_MAX = 1000  # runs per job array (SLURM's default MaxArraySize is 1001)


# the option of each field of `SlurmOptions` a user sets, in messages
SLURM_FLAGS = {
    "partition": "--slurm-partition",
    "gpus_per_run": "--gpus-per-run",
    "time_min": "--slurm-time",
    "cpus_per_run": "--slurm-cpus",
    "mem": "--slurm-mem",
    "sbatch": "--slurm-option",
    "setup": "--slurm-setup",
}


@dataclass
class SlurmOptions:
    """What `--launcher slurm` asks of the cluster for each run; None: the default (see `resolved`)."""

    partition: str | None = None
    gpus_per_run: int | None = None  # default 1; above 1, one DDP process per GPU
    time_min: int | None = None  # default 60: the job's time limit; the run is checkpointed and requeued before it
    cpus_per_run: int | None = None
    mem: str | None = None  # e.g. 64G
    sbatch: dict[str, str | bool] = field(default_factory=dict)  # any other sbatch option: {"qos": "high"}
    setup: list[str] = field(default_factory=list)  # shell lines before the run (module load, activate)
    max_requeues: int = 3  # requeues after timeouts; the next timeout ends the run (preemptions are not counted)
    folder: str | None = None  # logs and pickles (default: <runs-dir>/slurm); on a shared file system

    def asked(self) -> list[str]:
        """The options these ask for, as their flags (a launcher other than SLURM refuses them)."""
        return [flag for name, flag in SLURM_FLAGS.items() if getattr(self, name)]

    def resolved(self) -> SlurmOptions:
        """These options checked, with the defaults of those left None.

        Raises ConfigError naming the option out of range.
        """
        for name, least in (("gpus_per_run", 0), ("time_min", 1), ("cpus_per_run", 1)):
            value = getattr(self, name)
            if value is not None and value < least:
                raise ConfigError(f"{SLURM_FLAGS[name]} must be at least {least}, got {value}")
        return dataclasses.replace(
            self,
            gpus_per_run=DEFAULT_GPUS_PER_RUN if self.gpus_per_run is None else self.gpus_per_run,
            time_min=DEFAULT_TIME_MIN if self.time_min is None else self.time_min,
        )


def parse_sbatch_options(items: list[str]) -> dict[str, str | bool]:
    """`--slurm-option qos=high --slurm-option exclusive` -> {"qos": "high", "exclusive": True}."""
    options: dict[str, str | bool] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip().lstrip("-")
        if not key:
            raise ConfigError(f"--slurm-option {item!r}: expected an sbatch option as NAME=VALUE or NAME")
        options[key] = value if sep else True
    return options


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


def require_slurm() -> None:
    """Refuse the SLURM launcher where SLURM's commands are missing (ConfigError)."""
    if shutil.which("sbatch") is None or shutil.which("srun") is None:
        raise ConfigError("--launcher slurm needs sbatch and srun on PATH: run it on a SLURM login node")


class SlurmLauncher(Launcher):
    name = "slurm"
    poll_s = 1.0

    def __init__(self, runs_dir: Path, options: SlurmOptions, jobs: int | None, name: str) -> None:
        import submitit

        require_slurm()
        options = options.resolved()
        self.folder = Path(options.folder or Path(runs_dir) / "slurm").absolute()
        self.folder.mkdir(parents=True, exist_ok=True)
        self.window = sys.maxsize  # the cluster queues them; the array caps how many run at once
        self.executor = submitit.SlurmExecutor(self.folder, max_num_timeout=options.max_requeues)
        parameters: dict[str, Any] = {
            "job_name": name,
            "time": options.time_min,
            "nodes": 1,
            "ntasks_per_node": 1,
            "signal_delay_s": 90,
            "additional_parameters": {"requeue": True, **options.sbatch},
        }
        if options.partition:
            parameters["partition"] = options.partition
        if options.gpus_per_run:
            parameters["gpus_per_node"] = options.gpus_per_run
            parameters["ntasks_per_node"] = options.gpus_per_run  # one DDP process per GPU
        if options.cpus_per_run:
            parameters["cpus_per_task"] = options.cpus_per_run
        if options.mem:
            parameters["mem"] = options.mem
        if options.setup:
            parameters["setup"] = list(options.setup)
        if jobs:
            parameters["array_parallelism"] = jobs
        self.executor.update_parameters(**parameters)
        self.submitted: list[Any] = []
        self.stopped_at: float | None = None
        self._last_update = time.monotonic()
        self._preempted: dict[str, float] = {}  # job id -> when it was first seen PREEMPTED
        self._done_since: dict[str, float] = {}  # job id -> when the cluster first said it ended
        self._waiting = False  # a job's result says interrupted: ask the cluster more often
        self._queue: dict[str, str] = {}  # squeue's states of the jobs sacct does not know
        self.preempted_final_s = PREEMPTED_FINAL_S

    def submit(self, jobs: list[tuple[Any, int]]) -> list[Any]:
        submitted: list[Any] = []
        try:
            for start in range(0, len(jobs), ARRAY_MAX):
                with self.executor.batch():
                    delayed = [self.executor.submit(job) for job, _ in jobs[start : start + ARRAY_MAX]]
                submitted.extend(delayed)
        except BaseException:
            ids = sorted({job.job_id.split("_")[0] for job in submitted})
            if ids:  # the arrays already queued would run untracked
                subprocess.run(["scancel", *ids], check=False, capture_output=True)
            raise
        self.submitted.extend(submitted)
        return submitted

    def poll(self) -> None:
        """Ask the cluster about every job at once (one sacct), every 30 s (every 2 s after a stop).

        Jobs sacct does not know (accounting is off, or has not recorded them yet) are
        asked about with squeue.
        """
        if not self.submitted:
            return
        every = 2.0 if self.stopped_at is not None else 5.0 if self._waiting else SACCT_EVERY_S
        if time.monotonic() - self._last_update >= every:
            self.submitted[0].watcher.update()
            self._queue = self._ask_queue()
            self._last_update = time.monotonic()
        self._waiting = False  # set again by `finished` for a job whose end only the cluster can tell

    def _ask_queue(self) -> dict[str, str]:
        """squeue's states of the jobs sacct knows nothing of; `ENDED` for those squeue no longer lists."""
        watcher = self.submitted[0].watcher
        unknown = [job.job_id for job in self.submitted if watcher.get_state(job.job_id, mode="cache") == "UNKNOWN"]
        if not unknown:
            return {}
        ids = ",".join(sorted({job_id.split("_")[0] for job_id in unknown}))
        try:
            asked = subprocess.run(
                ["squeue", "-h", "-r", "--states=all", "-o", "%i|%T", "-j", ids],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
        except (OSError, subprocess.SubprocessError):
            return {}
        if asked.returncode != 0 and "Invalid job id" not in asked.stderr:
            return {}  # the controller did not answer: nothing is known (squeue fails so when no id is left)
        listed = dict(line.split("|", 1) for line in asked.stdout.splitlines() if "|" in line)
        return {job_id: listed.get(job_id, "ENDED") for job_id in unknown}

    def _state(self, job: Any) -> str:
        """The job's state (`CANCELLED`, ...): sacct's, else squeue's, else `UNKNOWN`."""
        state = job.watcher.get_state(job.job_id, mode="cache").upper()
        if state == "UNKNOWN":
            state = self._queue.get(job.job_id, state)
        return (state.split() or ["UNKNOWN"])[0].rstrip("+")  # "CANCELLED by 12" -> CANCELLED

    def _ended(self, job: Any) -> bool:
        """Whether the job is over: not running, waiting, suspended or on its way back from a requeue."""
        return self._state(job) not in UNFINISHED_STATES or self._preempted_for_good(job)

    def finished(self, job: Any) -> bool:
        from tfkit.ablate.run import RunOutcome

        if job.task(0).paths.result_pickle.exists():
            outcome = read_outcome(job, RunOutcome)
            if outcome is None or outcome.status != "interrupted":
                return True
            # interrupted by a preemption, say: final once the cluster says the job will not come back
            self._waiting = True
        done = self._ended(job)
        if done and job.task(0).paths.stdout.exists() and not job.task(0).paths.result_pickle.exists():
            # ended while it ran (cancelled, preempted): it has SLURM's KillWait to stop at a step boundary
            since = self._done_since.setdefault(job.job_id, time.monotonic())
            return time.monotonic() - since > KILL_WAIT_S
        if self.stopped_at is not None and time.monotonic() - self.stopped_at > STOP_WAIT_S:
            return True  # cancelled, and still not over long after: left to the cluster
        return done

    def stopped_on_cluster(self, job: Any) -> bool:
        """Whether the cluster cancelled or preempted the job (by hand, by a preemption, by our Ctrl-C)."""
        return self._state(job) in ("CANCELLED", "PREEMPTED")

    def _preempted_for_good(self, job: Any) -> bool:
        """PREEMPTED for `preempted_final_s`: preempted by cancelling (PreemptMode=CANCEL), not coming back.

        submitit counts PREEMPTED as unfinished, since a partition that preempts by
        requeueing shows it on the way back to PENDING.
        """
        if self._state(job) != "PREEMPTED":
            self._preempted.pop(job.job_id, None)
            return False
        since = self._preempted.setdefault(job.job_id, time.monotonic())
        return time.monotonic() - since >= self.preempted_final_s

    def stop(self, jobs: list[Any], signum: int) -> None:
        self.stopped_at = self.stopped_at or time.monotonic()
        ids = sorted({job.job_id.split("_")[0] for job in self.submitted})
        if ids:
            subprocess.run(["scancel", *ids], check=False, capture_output=True)


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
    from tfkit.ablate.jobs import RunJob
    from tfkit.ablate.run import AblationResult, RunOutcome, with_device

    pending = deque(specs)
    running: dict[int, tuple[Any, RunSpec]] = {}  # slot -> (job, spec)
    outcomes: list[RunOutcome] = []
    stop = threading.Event()
    stopped_by: list[str] = []
    failed = False
    submit_error: ConfigError | None = None
    results_error: StorageError | None = None  # the results file failed in a job: the ablation stops
    devices = getattr(launcher, "devices", None)
    results_arg = None if results is None else (str(results.path.absolute()), results.columns)

    def forward(signum: int, frame: Any) -> None:
        stop.set()
        stopped_by.append(signal.Signals(signum).name)
        launcher.stop([job for job, _ in running.values()], signum)

    try:
        with _on_stop_signals(forward):
            while pending or running:
                batch: list[tuple[Any, int]] = []
                specs_of_batch: list[RunSpec] = []
                free = [
                    slot for slot in range(min(launcher.window, len(pending) + len(running))) if slot not in running
                ]
                while pending and free and not stop.is_set():
                    spec = pending.popleft()
                    if results is not None and results.claimed_elsewhere({spec.run_id}):
                        skipped = RunOutcome(spec.run_id, "skipped", message="running elsewhere")
                        outcomes.append(skipped)
                        callback.on_run_end(spec, skipped)
                        continue
                    slot = free.pop(0)
                    spec = with_device(spec, devices[slot % len(devices)] if devices else None)
                    batch.append((RunJob(spec, results_arg, threads, os.getcwd()), slot))
                    specs_of_batch.append(spec)
                jobs = []
                if batch:
                    try:
                        jobs = launcher.submit(batch)
                    except Exception as e:  # sbatch failed (or a Ctrl-C at the terminal reached it too)
                        if not stop.is_set():  # the runs started stop at a step boundary, then this is raised
                            submit_error = ConfigError(f"could not submit the runs: {e}")
                        stop.set()
                        launcher.stop([job for job, _ in running.values()], signal.SIGTERM)
                        batch = specs_of_batch = []
                    for job, spec, (_, slot) in zip(jobs, specs_of_batch, batch, strict=True):
                        running[slot] = (job, spec)
                        callback.on_run_start(spec)
                    if stop.is_set():  # a signal came while they were submitted
                        launcher.stop([job for job, _ in running.values()], signal.SIGTERM)
                launcher.poll()
                for slot, (job, spec) in list(running.items()):
                    if not launcher.finished(job):
                        continue
                    del running[slot]
                    outcome = read_outcome(job, RunOutcome)
                    if outcome is not None and outcome.run_id != spec.run_id:
                        outcome = None  # another job's (a reused job id): not this run's
                    with contextlib.suppress(OSError):
                        job.task(0).paths.result_pickle.unlink()  # read once: never taken for a later job's
                    if outcome is None:
                        if stop.is_set():  # stopped before it could say so
                            outcome = RunOutcome(spec.run_id, "interrupted", message="stopped", stopped_by="SIGTERM")
                        elif launcher.stopped_on_cluster(job):
                            message = "cancelled or preempted on the cluster"
                            outcome = RunOutcome(spec.run_id, "interrupted", message=message, stopped_by="SIGTERM")
                        else:
                            log = job.task(0).paths.stderr
                            outcome = RunOutcome(
                                spec.run_id, "error", message=f"job died: {_last_error_line(job)} (log: {log})"
                            )
                    failed = failed or outcome.status == "error"
                    outcomes.append(outcome)
                    callback.on_run_end(spec, outcome)
                    if outcome.fatal and results_error is None:
                        results_error = StorageError(outcome.message or "the results file could not be written")
                        stop.set()
                        launcher.stop([job for job, _ in running.values()], signal.SIGTERM)
                    if outcome.status == "interrupted" and launcher.name == "local" and not stop.is_set():
                        stop.set()  # a run stopped by a signal sent to it: the ablation stops too
                        stopped_by.append(outcome.stopped_by or "SIGINT")
                        launcher.stop([job for job, _ in running.values()], signal.SIGTERM)
                if stop.is_set():
                    pending.clear()
                if results is not None:
                    results.settle()
                time.sleep(launcher.poll_s)
    finally:
        if running and launcher.name == "local":  # only on an unexpected error: leave no orphan
            for job, _ in running.values():
                with contextlib.suppress(OSError):
                    os.killpg(job._process.pid, signal.SIGKILL)
                    job._process.wait()
        launcher.close(failed)
    if results_error is not None:
        raise results_error
    if submit_error is not None:
        raise submit_error
    return AblationResult(outcomes, interrupted=stop.is_set(), stopped_by=(stopped_by or [None])[0])
