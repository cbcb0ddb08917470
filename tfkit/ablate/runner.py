"""Running an ablation: the runs of a plan in order, here or as jobs of a launcher.

`run_ablation` trains the runs of a plan in order: in this process (`jobs=1`), or as
jobs of a launcher (`tfkit.ablate.launch`: local processes or SLURM, through submitit);
each run is `tfkit.ablate.run.run_one`. Nothing here prints: progress goes to an
`AblationCallback`. Ctrl-C and SIGTERM stop the current runs at a step boundary, jobs included.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from tfkit.ablate.grid import RunSpec
from tfkit.ablate.launch import LocalLauncher, remove_stale_job_dirs, run_jobs
from tfkit.ablate.results import ResultsFile
from tfkit.ablate.run import AblationCallback, AblationResult, claim_run, resume_mode, run_one, with_device
from tfkit.signals import Terminated


def run_ablation(
    specs: list[RunSpec],
    results: ResultsFile | None,
    *,
    jobs: int = 1,
    devices: list[str] | None = None,
    callback: AblationCallback | None = None,
    launcher: Any = None,
) -> AblationResult:
    """Train `specs` in order, each once its claim is taken; stop launching runs after Ctrl-C or SIGTERM.

    With one job and no `launcher` the runs train in this process; otherwise they are jobs
    of `launcher` (`tfkit.ablate.launch`; default: the local launcher with `jobs` at once).
    The current runs stop cleanly at a step boundary.
    """
    callback = callback or AblationCallback()
    runs_dirs = {Path(spec.config.log.out).parent for spec in specs}
    for runs_dir in runs_dirs:  # job folders of local launchers killed earlier
        remove_stale_job_dirs(runs_dir)
    if launcher is None and jobs <= 1:
        return _run_here(specs, results, devices, callback)
    if launcher is None:
        launcher = LocalLauncher(next(iter(runs_dirs), Path(".")), jobs, devices)
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
