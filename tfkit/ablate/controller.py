"""The local launcher's job controller: `python -m tfkit.ablate.controller FOLDER PARENT_PID`.

submitit's own local controller (`submitit.local.local.Controller`: it starts the job's
task, forwards SIGTERM to it, sends the timeout signal and restarts a requeued task)
with two additions: it ends with the ablation that started it, even on kill -9 of that
process (SIGTERM, which it forwards, so the run stops at a step boundary); and a task
killed by a signal it did not catch (the kernel's out-of-memory killer, a kill -9) gets
a last line in its error log that says so, which the ablation reports as the cause.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from tfkit.ablate.processes import die_with_parent


def death_line(exit_code: int | None) -> str | None:
    """The log line for a task that a signal ended (a negative exit code), or None."""
    if exit_code is None or exit_code >= 0:
        return None
    try:
        name = signal.Signals(-exit_code).name
    except ValueError:
        name = f"signal {-exit_code}"
    why = " (the system may have run out of memory)" if -exit_code == signal.SIGKILL else ""
    return f"the run's process was killed by {name}{why}"


def main(argv: list[str]) -> int:
    folder, parent_pid = argv
    die_with_parent(int(parent_pid))
    from submitit.local.local import Controller

    class ReportingController(Controller):
        def wait(self, freq: int = 24) -> Sequence[int | None]:
            codes = super().wait(freq)
            for log, code in zip(self.stderrs, codes, strict=False):
                line = death_line(code)
                if line is not None:
                    log.write(f"tfkit: {line}\n")
                    log.flush()
            return codes

    ReportingController(Path(folder)).run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
