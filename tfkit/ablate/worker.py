"""One ablation run in its own process: `python -m tfkit.ablate.worker JOB.json`.

The job file (written by `run_ablation`) holds the run's config and ids, the results
file to append to, the CPU threads to use and the parent's process id. The outcome is
written atomically to the path the job names. Ctrl-C and SIGTERM (forwarded by the
parent) stop the run at a step boundary; so does the parent's death, even by kill -9
(the kernel sends SIGTERM). The run's claim is an inherited file descriptor: it is
held until this process ends.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

from tfkit.ablate.processes import die_with_parent
from tfkit.signals import Terminated, raise_on_sigterm


def main(argv: list[str]) -> int:
    raise_on_sigterm()
    job = json.loads(Path(argv[0]).read_text())
    die_with_parent(job["parent_pid"])
    from tfkit.ablate.results import ResultsFile
    from tfkit.ablate.runner import RunOutcome, run_one, spec_from_job
    from tfkit.io import write_json_atomic

    try:
        import torch

        torch.set_num_threads(job["threads"])
        spec = spec_from_job(job)
        results = None
        if job["results"] is not None:
            results = ResultsFile(job["results"]["path"], job["results"]["columns"])
        outcome = run_one(spec, results)
    except KeyboardInterrupt as e:  # stopped before the run began
        by = "SIGTERM" if isinstance(e, Terminated) else "SIGINT"
        outcome = RunOutcome(job["run"]["run_id"], "interrupted", message="interrupted", stopped_by=by)
    write_json_atomic(job["outcome"], dataclasses.asdict(outcome))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
