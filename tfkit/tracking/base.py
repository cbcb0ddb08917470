"""The `Tracker` interface every logger implements, and a fan-out over several of them."""

from __future__ import annotations

from typing import Any, Protocol


class Tracker(Protocol):
    """Receives rows as the trainer logs them. Keys are the CSV column names.

    A tracker that keeps its own files may also define `continue_after(step)`: a resumed
    run (or a rollback) logs the steps after `step` again, so the points past it go. It may
    return notes (one line each) about what it found and set aside, and define
    `check_continuable()`, which raises before any tracker changes a file if it cannot.
    """

    def log_train(self, row: dict[str, Any]) -> None: ...

    def log_val(self, row: dict[str, Any]) -> None: ...

    def log_summary(self, summary: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


class TrackerGroup:
    """Sends every call to each tracker in turn (CSV first, so it is written even if wandb fails)."""

    def __init__(self, trackers: list[Tracker]) -> None:
        self.trackers = trackers

    def log_train(self, row: dict[str, Any]) -> None:
        for tracker in self.trackers:
            tracker.log_train(row)

    def log_val(self, row: dict[str, Any]) -> None:
        for tracker in self.trackers:
            tracker.log_val(row)

    def log_summary(self, summary: dict[str, Any]) -> None:
        for tracker in self.trackers:
            tracker.log_summary(summary)

    def check_continuable(self) -> None:
        """Raise (a `DataError`) if a tracker's files cannot be continued, before any of them changes."""
        for tracker in self.trackers:
            if hasattr(tracker, "check_continuable"):
                tracker.check_continuable()

    def continue_after(self, step: int) -> list[str]:
        """A resumed run: the file logs (CSV, TensorBoard) keep their rows up to `step` (wandb continues by its id).

        Returns the trackers' notes (damage set aside), one line each.
        """
        notes: list[str] = []
        for tracker in self.trackers:
            if hasattr(tracker, "continue_after"):
                notes += tracker.continue_after(step) or []
        return notes

    def close(self) -> None:
        for tracker in self.trackers:
            tracker.close()
