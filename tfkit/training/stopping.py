"""When a run stops: its limits, and a request to stop at the next step boundary.

The limits are `--max-steps`, `--max-tokens`, `--max-epochs` and `--max-time-seconds`.
A request is the first Ctrl-C or SIGTERM while a run trains (`stop_on_signals`), or a
call of `request_stop` (a job's time-limit signal): the run saves and ends at the next
step boundary.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from tfkit.config import TrainConfig
from tfkit.signals import Terminated


def limit_reached(t: TrainConfig, step: int, tokens_seen: int, epoch: float) -> bool:
    """Whether the run is at its end: `--max-steps`, `--max-tokens` or `--max-epochs` reached."""
    return (
        (t.max_steps is not None and step >= t.max_steps)
        or (t.max_tokens is not None and tokens_seen >= t.max_tokens)
        or (t.max_epochs is not None and epoch >= t.max_epochs)
    )


def time_is_the_only_stop(t: TrainConfig) -> bool:
    """`--max-time-seconds` is the run's only stop criterion: it is then the run's length."""
    return t.max_time_seconds is not None and t.max_steps is None and t.max_tokens is None and t.max_epochs is None


def time_is_up(t: TrainConfig, session_seconds: float, run_seconds: float) -> bool:
    """Whether `--max-time-seconds` is spent.

    It is the budget of one session (one command, a job on a cluster): a resumed run gets it
    afresh, so each resubmission of a time-limited command trains further. When it is the
    run's only stop criterion it is the run's length, counted over all its sessions.
    """
    if t.max_time_seconds is None:
        return False
    return (run_seconds if time_is_the_only_stop(t) else session_seconds) >= t.max_time_seconds


@dataclass
class StopFlag:
    requested: bool = False
    signal: str | None = None  # the name of the signal that asked to stop: SIGINT or SIGTERM


_ACTIVE_FLAGS: list[StopFlag] = []  # the stop flag of the run training in this process, if any
_TRAINED: list[bool] = []  # a run has trained in this process (appended once)


def request_stop(signal_name: str = "SIGTERM") -> str:
    """Ask the run training in this process to stop at the next step boundary, as a first SIGTERM does.

    For a stop that is not a signal to the trainer (a job's timeout signal): asking twice, or
    after a SIGTERM, does not escalate to stopping mid-step. Returns `training` (asked),
    `finished` (a run trained here and ended: nothing to stop) or `not started`.
    """
    if not _ACTIVE_FLAGS:
        return "finished" if _TRAINED else "not started"
    flag = _ACTIVE_FLAGS[-1]
    if not flag.requested:
        flag.requested, flag.signal = True, signal_name
    return "training"


@contextlib.contextmanager
def stop_on_signals(flag: StopFlag) -> Iterator[None]:
    """The first Ctrl-C or SIGTERM asks the loop to stop at the next step boundary; a second one raises.

    A second SIGTERM raises `Terminated`, a second Ctrl-C `KeyboardInterrupt`. Signals
    reach only the main thread, so elsewhere (a thread of a notebook) nothing is installed.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def handler(signum: int, frame: Any) -> None:
        if flag.requested:
            raise Terminated if signum == signal.SIGTERM else KeyboardInterrupt
        flag.requested = True
        flag.signal = signal.Signals(signum).name

    for sig in previous:
        signal.signal(sig, handler)
    _ACTIVE_FLAGS.append(flag)
    _TRAINED[:] = [True]
    try:
        yield
    finally:
        _ACTIVE_FLAGS.remove(flag)
        for sig, old in previous.items():
            if old is not None:  # None: a handler not installed from Python, which cannot be put back
                signal.signal(sig, old)
