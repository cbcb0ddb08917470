"""When a run stops: `--max-steps`, `--max-tokens`, `--max-epochs` and `--max-time-seconds`."""

from __future__ import annotations

from tfkit.config import TrainConfig


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
