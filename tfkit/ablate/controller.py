"""The local launcher's job controller: `python -m tfkit.ablate.controller FOLDER PARENT_PID`.

submitit's own local controller (`submitit.local.local.Controller`: it starts the job's
task, forwards SIGTERM to it, sends the timeout signal and restarts a requeued task)
with one addition: it ends with the ablation that started it, even on kill -9 of that
process (SIGTERM, which it forwards, so the run stops at a step boundary).
"""

from __future__ import annotations

import sys
from pathlib import Path

from tfkit.ablate.processes import die_with_parent


def main(argv: list[str]) -> int:
    folder, parent_pid = argv
    die_with_parent(int(parent_pid))
    from submitit.local.local import Controller

    Controller(Path(folder)).run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
