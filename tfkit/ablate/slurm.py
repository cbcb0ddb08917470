"""The SLURM launcher: an ablation's runs as one SLURM job array, and the options it asks the cluster for.

Every run is submitted at once as one job array (`--jobs` caps how many run at once),
with `--signal=USR2@90` (stop, checkpoint and requeue before the time limit) and
`--requeue` (a preempted job comes back and resumes). Logs are kept in
`<runs-dir>/slurm/`. Ctrl-C cancels the jobs (`scancel`): they stop at a step boundary.
If the ablation ends any other way the jobs go on, and their rows still reach the
results file, which every job appends to itself. A job's state comes from `sacct`
(through submitit), and from `squeue` for jobs that accounting does not know (yet, or at
all where accounting is off).
"""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tfkit.ablate.defaults import DEFAULT_GPUS_PER_RUN, DEFAULT_TIME_MIN
from tfkit.ablate.launch import Launcher, read_outcome
from tfkit.errors import ConfigError

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
