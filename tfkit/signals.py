"""SIGTERM unwinds like Ctrl-C: the `Terminated` exception and the handler that raises it.

`timeout`, SLURM and Kubernetes stop a job with SIGTERM, whose default action ends the
process at once: no `finally`, no temp-file cleanup, no summary. With
`raise_on_sigterm` installed, SIGTERM raises `Terminated` instead, a `KeyboardInterrupt`,
so every path that cleans up after Ctrl-C runs for it too, and the CLI exits 143.
Training replaces this handler during a run with its own, which stops at the next step
boundary (`tfkit.training.session`). Torch-free: the CLI installs it before any command.
"""

from __future__ import annotations

import signal
import threading
from typing import Any


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived: unwinds like Ctrl-C, and ends the command with exit code 143."""

    def __init__(self, message: str = "terminated by SIGTERM") -> None:
        super().__init__(message)


def raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated


def raise_on_sigterm() -> None:
    """Make SIGTERM raise `Terminated` in the main thread (nothing happens in another thread)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, raise_terminated)
