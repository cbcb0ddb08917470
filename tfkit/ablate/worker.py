"""One ablation run in its own process: `python -m tfkit.ablate.worker JOB.json`.

The job file (written by `run_ablation`) holds the run's config and ids, the results
file to append to, and the CPU threads to use. The outcome is written atomically to the
path the job names; Ctrl-C (forwarded by the parent) stops the run at a step boundary.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

from tfkit.ablate.results import ResultsFile
from tfkit.ablate.runner import run_one, spec_from_job
from tfkit.io import write_json_atomic


def main(argv: list[str]) -> int:
    job = json.loads(Path(argv[0]).read_text())
    import torch

    torch.set_num_threads(job["threads"])
    spec = spec_from_job(job)
    results = None
    if job["results"] is not None:
        results = ResultsFile(job["results"]["path"], job["results"]["columns"])
    outcome = run_one(spec, results)
    write_json_atomic(job["outcome"], dataclasses.asdict(outcome))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
