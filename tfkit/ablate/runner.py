"""Training the runs of an ablation in order, here or as jobs of a launcher.

`train_runs` trains the runs of a plan in order: in this process (no launcher), or as
jobs of a launcher (`tfkit.ablate.launch`: local processes or SLURM, through submitit);
each run is `tfkit.ablate.run.run_one`. Nothing here prints: progress goes to an
`AblationCallback`. Ctrl-C and SIGTERM stop the current runs at a step boundary, jobs included.
"""

from __future__ import annotations

import os
from pathlib import Path

from tfkit.ablate.grid import RunSpec
from tfkit.ablate.launch import Launcher, remove_stale_job_dirs, run_jobs
from tfkit.ablate.results import ResultsFile
from tfkit.ablate.run import AblationCallback, AblationResult, claim_run, resume_mode, run_one, with_device
from tfkit.signals import Terminated


def train_runs(
    specs: list[RunSpec],
    results: ResultsFile | None,
    *,
    launcher: Launcher | None = None,
    devices: list[str] | None = None,
    callback: AblationCallback | None = None,
) -> AblationResult:
    """Train `specs` in order, each once its claim is taken; stop launching runs after Ctrl-C or SIGTERM.

    Without a `launcher` the runs train in this process (on the first of `devices`, if
    any); otherwise they are jobs of `launcher` (`tfkit.ablate.launch`), which deals its
    own devices. The current runs stop cleanly at a step boundary.
    """
    callback = callback or AblationCallback()
    for runs_dir in {
        Path(spec.config.log.out).parent for spec in specs
    }:  # job folders of local launchers killed earlier
        remove_stale_job_dirs(runs_dir)
    if launcher is None:
        return _run_here(specs, results, devices, callback)
    threads = None  # torch's default: OMP_NUM_THREADS when set, else the cores a SLURM job was given
    if launcher.name == "local" and "OMP_NUM_THREADS" not in os.environ:
        threads = max(1, (os.cpu_count() or 1) // launcher.window)  # the cores shared by the jobs at once
    return run_jobs(specs, results, launcher, callback, threads)


def _run_here(
    specs: list[RunSpec], results: ResultsFile | None, devices: list[str] | None, callback: AblationCallback
) -> AblationResult:
    outcomes = []
    try:
        for spec in specs:
            spec = with_device(spec, devices[0] if devices else None)
            claim, skipped = claim_run(spec, results)
            if skipped is not None:
                outcomes.append(skipped)
                callback.on_run_end(spec, skipped)
                continue
            try:
                callback.on_run_start(spec)
                outcome = run_one(spec, results, callback.train, resume=resume_mode(spec))
            finally:
                if claim is not None:
                    claim.release()
            outcomes.append(outcome)
            callback.on_run_end(spec, outcome)
            if outcome.status == "interrupted":
                return AblationResult(outcomes, interrupted=True, stopped_by=outcome.stopped_by or "SIGINT")
    except KeyboardInterrupt as e:  # between runs: nothing is half-written
        by = "SIGTERM" if isinstance(e, Terminated) else "SIGINT"
        return AblationResult(outcomes, interrupted=True, stopped_by=by)
    return AblationResult(outcomes, interrupted=False)
