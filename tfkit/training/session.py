"""The run directory's lifecycle, shared by every trainer through `fit`.

`tfkit train pretrain`, `icl`, `sft` and `dpo` are each a `Task` that
`tfkit.training.fit.fit` trains; around the steps, `fit` uses what is here:

- `RunSession`: the run directory from `train_config.json` to `summary.json` — its
  lock (one writer per directory), the replacement of an old run (`--overwrite`), the
  `meta` record, the trackers (CSV, wandb, TensorBoard), the callback, S3 pushes, Ctrl-C
  and SIGTERM at a step boundary (`guard`), the summary written also when the run fails
  or is interrupted (a full disk included), and the `RunResult`.
  `FollowerSession` is its silent twin on the other ranks of a multi-process run.
- `TrainCallback`: the hooks a progress display implements.

How far the run has got and its step counters are `tfkit.training.counters`; the device
`tfkit.training.device`; the stop criteria and stop requests (signals, `request_stop`)
`tfkit.training.stopping`; the run directory's lock and files `tfkit.training.rundir`.
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypedDict

import torch

from tfkit.config import SectionedConfig
from tfkit.io import write_json_atomic
from tfkit.signals import Terminated
from tfkit.storage.uploader import RunPusher
from tfkit.tracking import CsvTracker, Tracker, TrackerGroup
from tfkit.tracking.csv import set_aside_note
from tfkit.training.counters import Progress
from tfkit.training.rundir import (  # noqa: F401  (RUN_FILES: importable from here)
    RUN_FILES,
    RunDirLock,
    prepare_run_dir,
    release_reserve,
    replacing,
    reserve,
    run_meta,
    write_summary,
)
from tfkit.training.stopping import StopFlag, stop_on_signals
from tfkit.training.task import Resumed


class TrainCallback:
    """Hooks for progress display; every method is optional."""

    def on_start(self, info: dict[str, Any]) -> None: ...

    def on_log(self, row: dict[str, Any]) -> None: ...

    def on_eval(self, row: dict[str, Any]) -> None: ...

    def on_end(self, summary: dict[str, Any]) -> None: ...

    def on_warning(self, message: str) -> None:
        """Something the user should know that does not stop the run (one line: damage set aside)."""


@dataclass
class RunResult:
    run_dir: Path
    status: str  # completed | time_limit (this session's --max-time-seconds spent first) | interrupted | failed
    summary: dict[str, Any]
    message: str | None = None
    pushed: dict[str, Any] | None = None  # the final push to --s3-uri, if any
    stopped_by: str | None = None  # SIGINT (Ctrl-C) or SIGTERM, for an interrupted run


class RunArgs(TypedDict, total=False):
    """How a training entry point runs besides its config (`train`, `train_icl`, `train_sft`, `train_dpo`).

    callback: where progress goes; overwrite: replace a run already in `--out`; resume: a
    checkpoint, a run directory, `auto` or a `Resumed` to continue (`tfkit.training.fit`).
    """

    callback: TrainCallback | None
    overwrite: bool
    resume: str | Path | Resumed | None


def open_trackers(config: SectionedConfig, run_dir: Path, meta: dict[str, Any]) -> TrackerGroup:
    """CSV logs in the run directory, wandb when the config names a project, TensorBoard with `--tensorboard`."""
    trackers: list[Tracker] = [CsvTracker(run_dir)]
    if config.log.wandb_project:
        from tfkit.tracking.wandb import WandbTracker

        trackers.append(
            WandbTracker(
                project=config.log.wandb_project,
                entity=config.log.wandb_entity,
                name=run_dir.name,
                group=config.log.wandb_group,
                config={**config.to_flat_dict(), **{k: meta[k] for k in ("num_params", "num_params_non_embedding")}},
                run_dir=run_dir,
                run_id=meta.get("wandb_id"),  # a resumed run continues the same wandb run
            )
        )
    if config.log.tensorboard:
        from tfkit.tracking.tensorboard import TensorBoardTracker

        trackers.append(TensorBoardTracker(run_dir))
    return TrackerGroup(trackers)


_STOPPED_BY = {"SIGINT": "interrupted by Ctrl-C", "SIGTERM": "interrupted by SIGTERM"}


class RunSession:
    """One run directory, from `train_config.json` to `summary.json` and the `RunResult`.

    `open` checks the S3 destination, creates and locks the directory; `start` replaces
    an old run (`--overwrite`) or continues a resumed one, records the run and opens its
    trackers once the model is built; `guard` watches the training loop (Ctrl-C, SIGTERM,
    failures: the summary is written whatever happens); `finish` writes the final summary,
    pushes the run and releases the lock. A run that fails before `start` leaves the
    directory as it was; its lock goes with the session (or the process).
    """

    def __init__(
        self,
        config: Any,
        run_dir: Path,
        pusher: RunPusher | None,
        callback: TrainCallback,
        lock: RunDirLock | None = None,
        replaces: list[str] | None = None,
    ) -> None:
        self.config = config
        self.run_dir = run_dir
        self.pusher = pusher
        self.callback = callback
        self.lock = lock
        self.replaces = replaces or []  # the old run's files, replaced at `start`
        self.status: str = "completed"
        self.message: str | None = None
        self.stopped_by: str | None = None
        self.offset = 0.0  # wall time of the run before it was resumed

    @classmethod
    def open(
        cls, config: Any, *, callback: TrainCallback | None, overwrite: bool, resuming: bool = False
    ) -> RunSession:
        """Check the S3 destination, then create and lock the run directory (`config.log.out`).

        With `resuming`, the run already in the directory is the one continued: kept, not refused.
        """
        run_dir = Path(config.log.out)
        pusher = (
            RunPusher.open(run_dir, config.log.s3_uri, overwrite=overwrite or resuming) if config.log.s3_uri else None
        )
        lock, existing = prepare_run_dir(run_dir, overwrite or resuming)
        return cls(config, run_dir, pusher, callback or TrainCallback(), lock, [] if resuming else existing)

    def close(self) -> None:
        """Release the run directory (`finish` does it at the end; for a run given up before `start`)."""
        if self.lock is not None:
            self.lock.release()

    def start(
        self,
        model: torch.nn.Module,
        device: torch.device,
        *,
        compiled: bool,
        horizon: int | None,
        meta: dict[str, Any],
        resumed: Resumed | None = None,
        logs: tuple[Any, ...] = (),
    ) -> None:
        """Write `train_config.json`, open the trackers and tell the callback; the run's clock starts.

        Args:
            model: the trained model (parameter counts).
            horizon: the step horizon of the schedule (None: time only).
            meta: the trainer's own `meta` entries (`data_source` first), after the versions.
            resumed: the checkpoint a resumed run continues from (its step and wall time: the
                logs keep their rows up to that step) and the checkpoints passed over for it
                (corrupt, unreadable), one line each, recorded with the resume.
            logs: the trainer's own logs besides the trackers (`spikes.csv`, `step_losses.csv`),
                cut back with them (`continue_after(step)`, returning a side file of damage or None).

        Damage found in the logs of a resumed run is set aside (`tfkit.tracking.csv.continue_log`):
        each side file is recorded with the resume and told to the callback's `on_warning`. A log
        that cannot be continued (its header damaged) raises `DataError`; the run is left as it was
        but for its logs cut back to the checkpoint.
        """
        self.device, self.horizon = device, horizon
        self.num_params = model.num_params()  # type: ignore[operator]
        self.num_params_ne = model.num_params(non_embedding=True)  # type: ignore[operator]
        self._record_start(compiled, meta, resumed, logs)
        self.offset = resumed.state["elapsed"] if resumed is not None else 0.0
        self.t0 = time.perf_counter()

    def _record_start(self, compiled: bool, meta: dict[str, Any], resumed: Resumed | None, logs: tuple) -> None:
        """`start`'s writing: the run's meta in `train_config.json`, the trackers, the logs cut back, the callback."""
        device, horizon = self.device, self.horizon
        resumed_step = resumed.state["progress"]["step"] if resumed is not None else None
        earlier = _read_meta(self.run_dir) if resumed is not None else {}
        meta = {
            **run_meta(device, compiled),
            **meta,
            "num_params": self.num_params,
            "num_params_non_embedding": self.num_params_ne,
            "total_steps": horizon,
            "started_at": earlier.get("started_at") or datetime.now(UTC).isoformat(timespec="seconds"),
            "wandb_id": earlier.get("wandb_id") or uuid.uuid4().hex[:16],
        }
        if resumed is not None:
            meta["resumed"] = [
                *earlier.get("resumed", []),
                {
                    "from": str(resumed.checkpoint),
                    "step": resumed_step,
                    "at": datetime.now(UTC).isoformat(timespec="seconds"),
                    **({"skipped": resumed.skipped} if resumed.skipped else {}),
                },
            ]
        # an old run (--overwrite) is set aside, and comes back if the new one fails to start
        try:
            with replacing(self.run_dir, self.replaces):
                write_json_atomic(self.run_dir / "train_config.json", {**self.config.to_dict(), "meta": meta})
                reserve(self.run_dir)
                self.tracker = open_trackers(self.config, self.run_dir, meta)
                notes = self._continue_logs(resumed_step, logs) if resumed_step is not None else []
                if notes:
                    meta["resumed"][-1]["set_aside"] = notes
                    write_json_atomic(self.run_dir / "train_config.json", {**self.config.to_dict(), "meta": meta})
        except BaseException:
            with contextlib.suppress(Exception):
                self.tracker.close()
            release_reserve(self.run_dir)
            raise
        self.replaces = []
        for note in notes:
            self.callback.on_warning(note)
        self.callback.on_start(
            {
                "run_dir": str(self.run_dir),
                "total_steps": horizon,
                "config": self.config.to_flat_dict(),
                **meta,
                "device": str(device),
                "resumed_step": resumed_step,
            }
        )

    def _continue_logs(self, step: int, logs: tuple[Any, ...]) -> list[str]:
        """Cut every log back to `step` once all can be; one note for each side file of damage."""
        logs = tuple(log for log in logs if log is not None)
        self.tracker.check_continuable()
        for log in logs:
            log.check_continuable()
        notes = self.tracker.continue_after(step)
        for log in logs:
            side = log.continue_after(step)
            if side is not None:
                notes.append(set_aside_note(log.path, side))
        return notes

    def elapsed(self) -> float:
        """Wall time of the run, the time before a resume included."""
        return self.offset + self.session_elapsed()

    def session_elapsed(self) -> float:
        """Wall time of this session: since this process started or resumed the run."""
        return time.perf_counter() - self.t0

    def log_train(self, row: dict[str, Any]) -> None:
        self.tracker.log_train(row)
        self.callback.on_log(row)

    def log_val(self, row: dict[str, Any]) -> None:
        self.tracker.log_val(row)
        self.callback.on_eval(row)

    def truncate_logs(self, step: int) -> None:
        """Drop the logged rows past `step` (a rollback trains those steps again)."""
        self.tracker.close()
        self.tracker = open_trackers(self.config, self.run_dir, _read_meta(self.run_dir))
        self.tracker.continue_after(step)

    def checkpoint_written(self) -> None:
        """After a `--checkpoint-every` checkpoint: push in the background when asked (training goes on)."""
        if self.pusher is not None and self.config.log.s3_every_checkpoint:
            self.pusher.push_soon()

    def checkpoints_pruned(self, paths: list[Path]) -> None:
        """Checkpoints `--keep-last` deleted: the S3 pushes delete them from the bucket too."""
        if self.pusher is not None and paths:
            self.pusher.forget(paths)

    def fail(self, message: str) -> None:
        self.status, self.message = "failed", message

    def out_of_time(self, step: int, horizon: int | None) -> None:
        """This session's `--max-time-seconds` ran out before the run's end: the run continues on a resume."""
        of = f" of {horizon}" if horizon is not None else ""
        seconds = self.config.train.max_time_seconds
        self.status = "time_limit"
        self.message = (
            f"stopped at step {step}{of} by --max-time-seconds {seconds:g} (this session's budget); "
            "--resume auto continues it"
        )

    def interrupt(self, signal_name: str | None) -> None:
        self.stopped_by = signal_name or "SIGINT"
        self.status, self.message = "interrupted", _STOPPED_BY[self.stopped_by]

    @contextlib.contextmanager
    def guard(self, progress: Progress, task: Any) -> Iterator[StopFlag]:
        """Around the training loop: Ctrl-C and SIGTERM set the yielded flag (the loop stops at a step boundary).

        Any exception (a second Ctrl-C or SIGTERM, a full disk) still writes a failed /
        interrupted summary, closes the trackers, abandons the S3 push and releases the
        run directory before it propagates; if even the summary cannot be written, the
        exception carries a note saying so.
        """
        self.progress, self.task = progress, task
        flag = StopFlag()
        try:
            with stop_on_signals(flag):
                yield flag
        except BaseException as exc:
            self.status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
            if self.status == "interrupted":
                self.stopped_by = "SIGTERM" if isinstance(exc, Terminated) else "SIGINT"
                self.message = _STOPPED_BY[self.stopped_by]
            elif not self.message:
                self.message = f"{type(exc).__name__}: {exc}"
            try:
                write_summary(self.run_dir, self.summary(progress, task))
            except Exception as e:
                exc.add_note(f"summary.json could not be written either ({e})")
            with contextlib.suppress(Exception):
                self.tracker.close()
            if self.pusher is not None:
                self.pusher.abandon()
            release_reserve(self.run_dir)
            self.close()
            raise

    def finish(self, progress: Progress, task: Any) -> RunResult:
        """Write the final summary, close the trackers, push the run (when asked), release the directory."""
        try:
            final = self.summary(progress, task)
            write_summary(self.run_dir, final)
            self.tracker.log_summary(final)
            self.tracker.close()
            self.callback.on_end(final)
            release_reserve(self.run_dir)  # not part of the pushed run
            pushed = self.pusher.finish() if self.pusher is not None else None  # waits for the final push
        finally:
            release_reserve(self.run_dir)
            self.close()
        return RunResult(
            run_dir=self.run_dir,
            status=self.status,
            summary=final,
            message=self.message,
            pushed=pushed,
            stopped_by=self.stopped_by,
        )

    def summary(self, progress: Progress, task: Any) -> dict[str, Any]:
        """The `summary.json` of the run as it stands (status, position, throughput, last eval)."""
        wall = self.elapsed()
        return {
            "status": self.status,
            "message": self.message,
            **progress.position(task.count_column),
            "time_s": wall,
            "tokens_per_s": progress.tokens_seen / max(wall - progress.eval_time, 1e-9),
            "num_params": self.num_params,
            "num_params_non_embedding": self.num_params_ne,
            "skipped_steps": progress.skipped_steps,
            **task.stage_fields(),
            **progress.last_val,
            "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }


def _read_meta(run_dir: Path) -> dict[str, Any]:
    """The `meta` of the run's train_config.json (empty when unreadable)."""
    try:
        return json.loads((run_dir / "train_config.json").read_text()).get("meta", {})
    except (OSError, ValueError, AttributeError):
        return {}


class FollowerSession(RunSession):
    """The session of a rank other than 0 in a multi-process run (`tfkit.training.distributed`).

    It trains in step with rank 0 and keeps the clock and the status, but writes nothing:
    rank 0 owns the run directory, its logs, checkpoints, summary and S3 pushes.
    """

    def __init__(self, config: Any) -> None:
        super().__init__(config, Path(config.log.out), None, TrainCallback())

    def _record_start(self, compiled: bool, meta: dict[str, Any], resumed: Resumed | None, logs: tuple) -> None:
        pass

    def log_train(self, row: dict[str, Any]) -> None:
        pass

    def log_val(self, row: dict[str, Any]) -> None:
        pass

    def truncate_logs(self, step: int) -> None:
        pass

    def checkpoint_written(self) -> None:
        pass

    def checkpoints_pruned(self, paths: list[Path]) -> None:
        pass

    @contextlib.contextmanager
    def guard(self, progress: Progress, task: Any) -> Iterator[StopFlag]:
        flag = StopFlag()
        with stop_on_signals(flag):
            yield flag

    def finish(self, progress: Progress, task: Any) -> RunResult:
        return RunResult(
            run_dir=self.run_dir,
            status=self.status,
            summary=self.summary(progress, task),
            message=self.message,
            stopped_by=self.stopped_by,
        )
