"""What every tfkit trainer shares: the run lifecycle and the optimizer step.

`tfkit train pretrain` (tfkit.training.loop), `tfkit train icl` (tfkit.training.icl) and
`tfkit train sft` / `dpo` (tfkit.training.finetune) differ in their data, loss,
evaluation and checkpoint contents. Everything around those is here, once:

- `RunSession`: the run directory from `train_config.json` to `summary.json` — the
  `meta` record, the trackers (CSV, wandb), the callback, the step loop with its stop
  criteria, log / eval / checkpoint cadence and S3 pushes, Ctrl-C at a step boundary,
  the summary written also when the run fails or is interrupted, and the `RunResult`.
- `StepCounters`: gradient clipping, the non-finite step check and the device-side
  counters of one optimizer step.

A trainer builds its model and optimizer, opens a `RunSession`, and hands `run` its
parts as a `StepHooks`. The step loop keeps every per-step quantity (loss sums,
non-finite counts) on the device and reads it back only at logging points, so the host
never waits on the GPU between steps.
"""

from __future__ import annotations

import contextlib
import math
import platform
import random
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

import tfkit
from tfkit.config import SectionedConfig, TrainConfig
from tfkit.errors import ConfigError
from tfkit.io import write_json_atomic
from tfkit.storage.uploader import RunPusher
from tfkit.tracking import CsvTracker, Tracker, TrackerGroup
from tfkit.training.schedule import lr_at

RUN_FILES = ("train_config.json", "train_log.csv", "val_log.csv", "summary.json", "checkpoints")


class TrainCallback:
    """Hooks for progress display; every method is optional."""

    def on_start(self, info: dict[str, Any]) -> None: ...

    def on_log(self, row: dict[str, Any]) -> None: ...

    def on_eval(self, row: dict[str, Any]) -> None: ...

    def on_end(self, summary: dict[str, Any]) -> None: ...


@dataclass
class RunResult:
    run_dir: Path
    status: str  # completed | interrupted | failed
    summary: dict[str, Any]
    message: str | None = None
    pushed: dict[str, Any] | None = None  # the final push to --s3-uri, if any


@dataclass
class _Flag:
    requested: bool = False


@dataclass
class Progress:
    """How far a run has got; trainers subclass it to add their own position (data cursor, curriculum)."""

    step: int = 0
    tokens_seen: int = 0
    epoch: float | None = None  # None: the data has no epochs (fresh prompts every step), no `epoch` column
    last_eval_step: int = -1
    last_eval_epoch: float = 0.0
    last_checkpoint_step: int = -1
    eval_time: float = 0.0
    last_val: dict[str, Any] = field(default_factory=dict)

    def position(self) -> dict[str, Any]:
        """The leading columns of every train / val row and of the summary: step, tokens_seen[, epoch]."""
        row: dict[str, Any] = {"step": self.step, "tokens_seen": self.tokens_seen}
        if self.epoch is not None:
            row["epoch"] = self.epoch
        return row

    def stage_fields(self) -> dict[str, Any]:
        """Columns describing the run's current stage (a curriculum), in every row and the summary."""
        return {}


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def prepare_device(seed: int, device: torch.device) -> None:
    """Seed every RNG and, on CUDA, let matmuls use TF32."""
    seed_everything(seed)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def compile_enabled(t: TrainConfig, device: torch.device) -> bool:
    """Whether to torch.compile: `--compile on`, or `auto` on CUDA."""
    return t.compile == "on" or (t.compile == "auto" and device.type == "cuda")


def prepare_run_dir(run_dir: Path, overwrite: bool) -> None:
    """Create the run directory; refuse to mix a new run into an old one unless asked."""
    existing = [name for name in RUN_FILES if (run_dir / name).exists()]
    if existing and not overwrite:
        raise ConfigError(f"{run_dir} already holds a run ({existing[0]}); choose another --out or pass --overwrite")
    for name in existing:
        path = run_dir / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    run_dir.mkdir(parents=True, exist_ok=True)


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def run_meta(device: torch.device, compiled: bool) -> dict[str, Any]:
    """Versions, device and commit: the `meta` every train_config.json starts with."""
    return {
        "tfkit_version": tfkit.__version__,
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
        "compiled": compiled,
        "git_commit": _git_commit(),
    }


def open_trackers(config: SectionedConfig, run_dir: Path, meta: dict[str, Any]) -> TrackerGroup:
    """CSV logs in the run directory, and wandb when the config names a project."""
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
            )
        )
    return TrackerGroup(trackers)


def stop_reached(t: TrainConfig, step: int, tokens_seen: int, epoch: float, elapsed: float) -> bool:
    """Whether any stop criterion of `t` is met."""
    return (
        (t.max_steps is not None and step >= t.max_steps)
        or (t.max_tokens is not None and tokens_seen >= t.max_tokens)
        or (t.max_epochs is not None and epoch >= t.max_epochs)
        or (t.max_time_seconds is not None and elapsed >= t.max_time_seconds)
    )


@contextlib.contextmanager
def _interrupt_flag(flag: _Flag) -> Iterator[None]:
    """First Ctrl-C asks the loop to stop at the next step boundary; a second one raises."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)

    def handler(signum: int, frame: Any) -> None:
        if flag.requested:
            raise KeyboardInterrupt
        flag.requested = True

    signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


class StepCounters:
    """The optimizer step and its device-side counters, read back only at logging points.

    `step` clips the gradients, checks loss and gradient norm for non-finite values and
    updates every counter on the device: no host-device sync per step. `read` (a sync)
    runs only when a train row is written.
    """

    def __init__(self, device: torch.device, n_metrics: int = 0) -> None:
        # loss and metric sums and the good-step count cover the steps since the last train row
        self.loss_sum = torch.zeros((), dtype=torch.float32, device=device)
        self.metric_sum = torch.zeros(n_metrics, dtype=torch.float32, device=device)
        self.good_steps = torch.zeros((), dtype=torch.long, device=device)
        self.consecutive_bad = torch.zeros((), dtype=torch.long, device=device)
        self.worst_run = torch.zeros((), dtype=torch.long, device=device)  # longest run of bad steps so far
        self.bad_total = torch.zeros((), dtype=torch.long, device=device)  # skipped steps over the whole run
        self.norm_last = torch.zeros((), dtype=torch.float32, device=device)

    def step(
        self,
        optimizer: torch.optim.Optimizer,
        params: list[torch.nn.Parameter],
        grad_clip: float,
        step_loss: torch.Tensor,
        step_metrics: torch.Tensor | None = None,
    ) -> None:
        """Clip (or measure) the gradients, apply the update unless non-finite, count, zero the gradients."""
        if grad_clip > 0:
            grad_norm = torch.nn.utils.clip_grad_norm_(params, grad_clip, foreach=True)
        else:
            grad_norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
        finite = torch.isfinite(step_loss) & torch.isfinite(grad_norm)
        # the fused AdamW kernel skips the whole update when found_inf is 1, on device
        optimizer.found_inf = (~finite).float()  # type: ignore[attr-defined]
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

        bad = (~finite).long()
        self.bad_total += bad
        self.consecutive_bad.mul_(bad).add_(bad)
        torch.maximum(self.worst_run, self.consecutive_bad, out=self.worst_run)
        self.loss_sum += torch.where(finite, step_loss, torch.zeros_like(step_loss))
        if step_metrics is not None:
            self.metric_sum += torch.where(finite, step_metrics, torch.zeros_like(step_metrics))
        self.good_steps += finite.long()
        self.norm_last = grad_norm.detach().float()

    def skipped(self) -> int:
        return int(self.bad_total.item())

    def failure(self, max_bad_steps: int) -> str | None:
        """Why the run must stop, once `max_bad_steps` steps in a row were non-finite."""
        worst = int(self.worst_run.item())
        if worst >= max_bad_steps:
            return f"{worst} non-finite steps in a row (loss or gradient norm); lower --lr or raise --warmup-steps"
        return None


@dataclass
class StepHooks:
    """A trainer's own parts, which `RunSession.run` calls around the shared step loop."""

    #: forward and backward of one optimizer step's micro-batches: (mean loss, mean metric vector or None)
    step: Callable[[], tuple[torch.Tensor, torch.Tensor | None]]
    #: after the optimizer step and `progress.step += 1`: count the step's tokens, move the epoch
    advance: Callable[[], None]
    #: (batch_size, seq_len) for the train row
    shape: Callable[[], tuple[int, int]]
    #: the validation metrics (`val_loss` first), logged as one val_log.csv row
    evaluate: Callable[[], dict[str, Any]]
    #: write a checkpoint for the current step
    save: Callable[[], None]
    #: extra train-row columns, after `skipped_steps` (read at logging points only)
    train_fields: Callable[[], dict[str, Any]] = dict
    #: names of the metric vector `step` returns, logged after train_loss
    metric_names: tuple[str, ...] = ()


class RunSession:
    """One run directory, from `train_config.json` to `summary.json` and the `RunResult`.

    `open` prepares the directory (and the S3 pusher), `start` records the run and opens
    its trackers once the model is built, `run` trains through the trainer's `StepHooks`
    and finishes the run whatever happens.
    """

    def __init__(self, config: Any, run_dir: Path, pusher: RunPusher | None, callback: TrainCallback) -> None:
        self.config = config
        self.run_dir = run_dir
        self.pusher = pusher
        self.callback = callback
        self.status: str = "completed"
        self.message: str | None = None

    @classmethod
    def open(cls, config: Any, *, callback: TrainCallback | None, overwrite: bool) -> RunSession:
        """Check the S3 destination, then create the run directory (`config.log.out`, resolved)."""
        run_dir = Path(config.log.out)
        pusher = RunPusher.open(run_dir, config.log.s3_uri, overwrite=overwrite) if config.log.s3_uri else None
        prepare_run_dir(run_dir, overwrite)
        return cls(config, run_dir, pusher, callback or TrainCallback())

    def start(
        self,
        model: torch.nn.Module,
        device: torch.device,
        *,
        compiled: bool,
        horizon: int | None,
        meta: dict[str, Any],
    ) -> None:
        """Write `train_config.json`, open the trackers and tell the callback; the run's clock starts.

        Args:
            model: the trained model (parameter counts, the parameters to clip).
            horizon: the step horizon of the schedule (None: time only).
            meta: the trainer's own `meta` entries (`data_source` first), after the versions.
        """
        self.device = device
        self.horizon = horizon
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.num_params = model.num_params()  # type: ignore[operator]
        self.num_params_ne = model.num_params(non_embedding=True)  # type: ignore[operator]
        meta = {
            **run_meta(device, compiled),
            **meta,
            "num_params": self.num_params,
            "num_params_non_embedding": self.num_params_ne,
            "total_steps": horizon,
            "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        write_json_atomic(self.run_dir / "train_config.json", {**self.config.to_dict(), "meta": meta})
        self.tracker = open_trackers(self.config, self.run_dir, meta)
        self.callback.on_start(
            {
                "run_dir": str(self.run_dir),
                "total_steps": horizon,
                "config": self.config.to_flat_dict(),
                **meta,
                "device": str(device),
            }
        )
        self.t0 = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def run(self, progress: Progress, optimizer: torch.optim.Optimizer, hooks: StepHooks) -> RunResult:
        """Train until the first stop criterion, evaluate and checkpoint the last step, write the summary.

        Returns a `RunResult` whose status is `completed`, `interrupted` (Ctrl-C: stopped at
        a step boundary with a checkpoint) or `failed` (too many non-finite steps in a row).
        Any exception (a second Ctrl-C included) still writes a failed / interrupted
        summary, closes the trackers and abandons the S3 push before it propagates.
        """
        self.counters = StepCounters(self.device, len(hooks.metric_names))
        flag = _Flag()
        try:
            with _interrupt_flag(flag):
                self.status, self.message = self._run_steps(progress, optimizer, hooks, flag)
                if self.status == "completed" and progress.last_eval_step != progress.step:
                    self._evaluate(progress, hooks)
                if progress.last_checkpoint_step != progress.step:
                    self._save(progress, hooks)
        except BaseException as exc:
            self.status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
            if not self.message:
                self.message = f"{type(exc).__name__}: {exc}" if self.status == "failed" else "interrupted"
            with contextlib.suppress(Exception):
                write_json_atomic(self.run_dir / "summary.json", self.summary(progress))
            with contextlib.suppress(Exception):
                self.tracker.close()
            if self.pusher is not None:
                self.pusher.abandon()
            raise
        final = self.summary(progress)
        write_json_atomic(self.run_dir / "summary.json", final)
        self.tracker.log_summary(final)
        self.tracker.close()
        self.callback.on_end(final)
        pushed = self.pusher.finish() if self.pusher is not None else None  # waits for the final push
        return RunResult(run_dir=self.run_dir, status=self.status, summary=final, message=self.message, pushed=pushed)

    def summary(self, progress: Progress) -> dict[str, Any]:
        """The `summary.json` of the run as it stands (status, position, throughput, last eval)."""
        wall = self.elapsed()
        return {
            "status": self.status,
            "message": self.message,
            **progress.position(),
            "wall_time_s": wall,
            "tokens_per_s": progress.tokens_seen / max(wall - progress.eval_time, 1e-9),
            "num_params": self.num_params,
            "num_params_non_embedding": self.num_params_ne,
            "skipped_steps": self.counters.skipped(),
            **progress.stage_fields(),
            **progress.last_val,
            "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }

    def _run_steps(
        self, progress: Progress, optimizer: torch.optim.Optimizer, hooks: StepHooks, flag: _Flag
    ) -> tuple[str, str | None]:
        """The step loop. Returns (status, message) once a stop criterion, Ctrl-C or failure ends it."""
        config, t = self.config, self.config.train
        counters = self.counters
        last_logged = 0
        lr = 0.0
        while True:
            stopping = "interrupted" if flag.requested else None
            epoch = progress.epoch if progress.epoch is not None else 0.0
            if stopping is None and stop_reached(t, progress.step, progress.tokens_seen, epoch, self.elapsed()):
                stopping = "completed"
            if stopping is not None:
                if progress.step > last_logged:  # the log ends where the run does
                    failed = self._log_train(progress, lr, hooks)
                    if failed is not None:
                        return "failed", failed
                return stopping, ("interrupted by Ctrl-C" if stopping == "interrupted" else None)

            lr = lr_at(progress.step, config.optim, self.horizon)
            for group in optimizer.param_groups:
                group["lr"] = lr
            step_loss, step_metrics = hooks.step()
            counters.step(optimizer, self.params, config.optim.grad_clip, step_loss, step_metrics)
            progress.step += 1
            hooks.advance()

            if progress.step % config.log.log_every == 0:
                last_logged = progress.step
                failed = self._log_train(progress, lr, hooks)
                if failed is not None:
                    return "failed", failed

            due_by_epochs = (
                progress.epoch is not None
                and t.max_epochs_between_evals is not None
                and progress.epoch - progress.last_eval_epoch >= t.max_epochs_between_evals
            )
            if progress.step % t.eval_every == 0 or due_by_epochs:
                self._evaluate(progress, hooks)
            if t.checkpoint_every is not None and progress.step % t.checkpoint_every == 0:
                self._save(progress, hooks)
                if self.pusher is not None and config.log.s3_every_checkpoint:
                    self.pusher.push_soon()  # background thread: training goes on

    def _log_train(self, progress: Progress, lr: float, hooks: StepHooks) -> str | None:
        """A train row for the steps since the last one; the failure message after too many bad steps."""
        counters = self.counters
        # the first device read: it waits for the queued steps, so time_s below counts them
        n_good = int(counters.good_steps.item())
        means = (counters.metric_sum / max(n_good, 1)).tolist() if hooks.metric_names else []
        batch_size, seq_len = hooks.shape()
        row: dict[str, Any] = {
            **progress.position(),
            "time_s": self.elapsed(),
            "lr": lr,
            "batch_size": batch_size,
            "seq_len": seq_len,
            "train_loss": float(counters.loss_sum.item()) / n_good if n_good else math.nan,
            **{name: (value if n_good else math.nan) for name, value in zip(hooks.metric_names, means)},
            "grad_norm": float(counters.norm_last.item()),
            "skipped_steps": counters.skipped(),
            **progress.stage_fields(),
            **hooks.train_fields(),
        }
        self.tracker.log_train(row)
        self.callback.on_log(row)
        counters.loss_sum.zero_()
        counters.metric_sum.zero_()
        counters.good_steps.zero_()
        return counters.failure(self.config.train.max_bad_steps)

    def _evaluate(self, progress: Progress, hooks: StepHooks) -> None:
        """Evaluate, log one val row and remember its summary metrics (those not per position)."""
        start = time.perf_counter()
        metrics = hooks.evaluate()
        progress.eval_time += time.perf_counter() - start
        row = {**progress.position(), "time_s": self.elapsed(), **progress.stage_fields(), **metrics}
        progress.last_eval_step = progress.step
        if progress.epoch is not None:
            progress.last_eval_epoch = progress.epoch
        progress.last_val = {k: v for k, v in metrics.items() if not k[-1].isdigit()}
        self.tracker.log_val(row)
        self.callback.on_eval(row)

    def _save(self, progress: Progress, hooks: StepHooks) -> None:
        hooks.save()
        progress.last_checkpoint_step = progress.step
