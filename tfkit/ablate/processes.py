"""Process helpers for ablations: is an owner alive, and ending workers with their parent.

A file or folder left by an ablation (a job folder, a results file moved aside) names
the process that owns it; `owner_alive` tells whether that process still runs, guarding
against a reused pid by the process start time where `/proc` has it.
`die_with_parent` makes a worker process end when the process that started it ends,
even on `kill -9` of that parent.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time

PR_SET_PDEATHSIG = 1  # from <sys/prctl.h>


def start_time(pid: int) -> str | None:
    """The start time of process `pid` in clock ticks since boot (Linux), else None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    # the command name (field 2) may hold spaces and parentheses: fields follow the last ")"
    return stat.rsplit(")", 1)[1].split()[19]


def owner_tag(pid: int | None = None) -> str:
    """`pid` (default: this process) and its start time, as `owner_alive` reads them back."""
    pid = os.getpid() if pid is None else pid
    return f"{pid}-{start_time(pid) or 0}"


def owner_alive(tag: str) -> bool:
    """Whether the process named by an `owner_tag` runs (a malformed tag counts as alive)."""
    try:
        pid_text, started = tag.split("-", 1)
        pid = int(pid_text)
    except ValueError:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    current = start_time(pid)
    return started == "0" or current is None or current == started


def die_with_parent(parent_pid: int, signum: int = signal.SIGTERM) -> None:
    """Get `signum` when the parent process ends, even by `kill -9`.

    On Linux the kernel sends it (prctl PR_SET_PDEATHSIG); elsewhere a daemon thread
    checks once a second whether the parent changed. Either way the signal comes once (a
    second one would ask a run to stop at once rather than at a step boundary), also when
    the parent ended before this process asked.
    """
    kernel = False
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            kernel = libc.prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0) == 0
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent_pid:  # the parent is already gone
        os.kill(os.getpid(), signum)
        return
    if kernel:
        return

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(1.0)
        os.kill(os.getpid(), signum)

    threading.Thread(target=watch, name="tfkit-parent-watch", daemon=True).start()
