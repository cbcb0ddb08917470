"""One ablation run as a submitit job: what a launcher submits, locally or to SLURM.

`RunJob` is a `submitit.helpers.Checkpointable`: submitit pickles it, runs it in a job
process and pickles what it returns (a `RunOutcome` as a dict). The job claims its run
in the results file itself (`claim_run`), so a run is trained by one process at a time
however many ablations and cluster nodes share the file, and rows reach the file once.

Signals inside a job:
- SIGTERM or SIGINT (Ctrl-C forwarded by the local launcher, `scancel`, a preemption):
  the run stops at the next step boundary with a checkpoint and the job ends with the
  run `interrupted`.
- The timeout signal (USR2, sent `signal_delay_s` before the time limit, and what
  submitit sends on preemption): the run stops the same way, then the job is requeued
  through submitit's protocol (`checkpoint` resubmits this same job), and the new
  attempt resumes from the checkpoint (`resume="auto"`). submitit counts timeouts:
  after `max_num_timeout` of them the job ends instead. The SIGTERM that SLURM's
  requeue sends the job is ignored: the run has already stopped.

Under the local launcher the job also ends with its controller process, even by kill -9.
A job of several tasks (SLURM, `--gpus-per-run` above 1) trains its run with DDP, one task
per GPU: rank 0 claims the run and writes its rows, and tells the others whether to train.
"""

from __future__ import annotations

import dataclasses
import os
import signal
from typing import Any

from submitit.helpers import Checkpointable

from tfkit.ablate.grid import RunSpec
from tfkit.ablate.results import ResultsWriteError


class RunJob(Checkpointable):
    """Train one run of an ablation; returns its `RunOutcome` as a dict (never raises for a failed run)."""

    def __init__(self, spec: RunSpec, results: tuple[str, list[str]] | None, threads: int | None, cwd: str) -> None:
        self.spec = spec
        self.results = results  # (path, columns) of the results file, or None without -c
        self.threads = threads  # CPU threads for torch; None: torch's default
        self.cwd = cwd  # the ablation's working directory: relative paths in the config are from there

    def __call__(self) -> dict[str, Any]:
        timeout_handler: _TimeoutHandler | None = None
        try:
            from tfkit.ablate.processes import die_with_parent
            from tfkit.signals import raise_on_sigterm

            raise_on_sigterm()  # until the trainer installs its own handler, and after it
            os.chdir(self.cwd)
            controller = os.environ.get("SUBMITIT_LOCAL_JOB_ID")  # the local launcher's controller
            if os.environ.get("SUBMITIT_EXECUTOR") == "local" and controller:
                die_with_parent(int(controller))  # its end ends this run (at a step boundary)
            timeout_handler = _TimeoutHandler()
            outcome = self._run(timeout_handler)
        except KeyboardInterrupt as e:  # stopped while starting (importing torch takes a while)
            outcome = _outcome(self.spec.run_id, "interrupted", "interrupted", _signal_name(e))
        if timeout_handler is not None and timeout_handler.asked and outcome["status"] == "interrupted":
            timeout_handler.requeue()  # does not return: submitit requeues this job and exits
        return outcome

    def _run(self, timeout_handler: _TimeoutHandler) -> dict[str, Any]:
        spec = self.spec
        dist = results = None
        try:
            with timeout_handler:
                from tfkit.ablate.run import claim_run, resume_mode, run_one

                if self.threads:
                    import torch

                    torch.set_num_threads(self.threads)
                dist = _join_tasks(spec.config.train.device)
                main = dist is None or dist.main
                claim = skipped = None
                failure: str | None = None
                try:
                    if self.results is not None and main:
                        from tfkit.ablate.results import ResultsFile

                        results = ResultsFile(*self.results)
                        results.use()  # held while this job may add rows: an --overwrite is refused
                        claim, skipped = claim_run(spec, results)  # rank 0 alone claims
                except Exception as e:  # the results file or claim could not be opened
                    failure = f"{type(e).__name__}: {e}"
                resume = resume_mode(spec) if main else None
                if dist is not None:  # every task of the job trains the run (from one start), or none does
                    skipped, failure, resume = _from_rank_0((skipped, failure, resume))
                if failure is not None:
                    return _outcome(spec.run_id, "error", failure)
                if skipped is not None:
                    return dataclasses.asdict(skipped)
                try:
                    return dataclasses.asdict(run_one(spec, results, resume=resume))
                finally:
                    if claim is not None:
                        claim.release()
        except KeyboardInterrupt as e:  # stopped before the run began
            return _outcome(spec.run_id, "interrupted", "interrupted", _signal_name(e))
        except ResultsWriteError as e:  # the ablation's other runs would fail on it too: it stops
            return {**_outcome(spec.run_id, "error", str(e)), "fatal": True}
        except Exception as e:  # joining the other tasks failed
            return _outcome(spec.run_id, "error", f"{type(e).__name__}: {e}")
        finally:
            if results is not None:
                results.leave()
            if dist is not None:
                from tfkit.training import distributed

                distributed.shutdown(dist)


def _outcome(run_id: str, status: str, message: str, stopped_by: str | None = None) -> dict[str, Any]:
    """A `RunOutcome` as a dict, made without importing the runner (and torch with it)."""
    return {
        "run_id": run_id,
        "status": status,
        "summary": {},
        "message": message,
        "time_s": 0.0,
        "stopped_by": stopped_by,
    }


def _signal_name(error: KeyboardInterrupt) -> str:
    from tfkit.signals import Terminated

    return "SIGTERM" if isinstance(error, Terminated) else "SIGINT"


def _join_tasks(device: str) -> Any:
    """A job of several tasks (`--gpus-per-run` above 1) is one DDP run: join its process group.

    Returns the task's `Dist`, or None for a job of one task. The torch environment
    (MASTER_ADDR, RANK, WORLD_SIZE, LOCAL_RANK) comes from the job's (submitit's
    `TorchDistributedEnvironment`), as torchrun would set it.
    """
    from submitit import JobEnvironment

    if JobEnvironment().num_tasks <= 1:
        return None
    from submitit.helpers import TorchDistributedEnvironment

    from tfkit.training import distributed

    TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
    return distributed.init(device)


def _from_rank_0(value: Any) -> Any:
    """Rank 0's `value` on every rank (so every task of a job trains its run, or none does)."""
    import torch.distributed as td

    box = [value]
    td.broadcast_object_list(box, src=0)
    return box[0]


class _TimeoutHandler:
    """The job's timeout signal stops the run like SIGTERM; `requeue` then hands over to submitit.

    submitit's own handler checkpoints and requeues from inside the signal handler, in the
    middle of a training step. Here the signal only asks the run to stop at the next step
    boundary (`request_stop`: the trainer saves a checkpoint; after a SIGTERM it changes
    nothing, where a second signal would stop the run mid-step); submitit's handler runs once
    the run has stopped.
    """

    def __init__(self) -> None:
        from submitit import JobEnvironment

        self.signum = JobEnvironment._usr_sig()
        self.submitit_handler: Any = None
        self.asked = False

    def __enter__(self) -> _TimeoutHandler:
        self.submitit_handler = signal.getsignal(self.signum)
        signal.signal(self.signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        signal.signal(self.signum, self.submitit_handler or signal.SIG_DFL)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.asked:
            return
        self.asked = True
        from tfkit.training.stopping import request_stop

        state = request_stop("SIGTERM")  # training: the run stops at the next step boundary
        if state == "finished":
            self.asked = False  # the run is over (pushing, closing): nothing to stop or requeue
        if state != "not started":
            return
        stop = signal.getsignal(signal.SIGTERM)  # no run training yet: unwind as SIGTERM does
        if callable(stop):
            stop(signal.SIGTERM, frame)

    def requeue(self) -> None:
        """Hand over to submitit, which requeues the job (`scontrol requeue`) and exits.

        SLURM's requeue also sends SIGTERM to the job: the run has stopped and its
        checkpoint is saved, so it is ignored rather than raised in the middle of the
        requeue (which it would cut short, with a traceback in the job's log).
        """
        if callable(self.submitit_handler):
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            self.submitit_handler(self.signum, None)
