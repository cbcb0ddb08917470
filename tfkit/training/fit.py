"""`fit`: the one training loop behind `tfkit train pretrain`, `icl`, `sft` and `dpo` (and `ablate`).

It reads top to bottom as one step does: learning rate -> micro-batches (forward,
backward) -> clip, non-finite and spike checks -> optimizer step -> log -> evaluate ->
checkpoint -> stop. What differs between the kinds of training is a `Task`
(`tfkit.training.task`): its model, batches (with a resumable position), loss and
metrics, evaluation and state. The run directory's lifecycle (lock, config record,
trackers, summary, S3 push, Ctrl-C and SIGTERM) is `tfkit.training.session.RunSession`.

Per-step quantities stay on the device (loss sums, non-finite and spike flags) and are
read back at logging points only, so the host does not wait on the GPU between steps;
the exceptions are the spike actions that must decide before the update (`checkpoint`,
`rollback`, `stop`), which read one flag per step.

Checkpoints (`tfkit.training.run_state`) hold everything the next step depends on (model,
optimizer, counters, the spike window, the task's data position, every RNG), so a resume
(`tfkit.training.resume`) continues a run exactly: on CPU the resumed run logs the same
numbers, bit for bit, as one never interrupted.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from tfkit.config import default_warmup
from tfkit.errors import ConfigError
from tfkit.training.average import WeightAverage
from tfkit.training.checkpoint import (
    checkpoint_path,
    prune_checkpoints,
    remove_partial_saves,
    rng_state,
    save_checkpoint,
    set_rng_state,
    spike_checkpoint_path,
)
from tfkit.training.columns import in_declared_order
from tfkit.training.counters import Progress, StepCounters
from tfkit.training.device import compile_enabled, prepare_device
from tfkit.training.distributed import from_env, full_state
from tfkit.training.monitor import Monitor
from tfkit.training.optim import build_optimizer
from tfkit.training.resume import check_resumable, check_run_dir, resolve_resume
from tfkit.training.run_state import BeforeStep, RunState, checkpoint_state, restore_state, roll_back
from tfkit.training.schedule import lr_at
from tfkit.training.session import FollowerSession, RunResult, RunSession, TrainCallback
from tfkit.training.spikes import SpikeDetector, SpikeLog, StepLossLog
from tfkit.training.stopping import limit_reached, time_is_the_only_stop, time_is_up
from tfkit.training.task import Resumed, Task
from tfkit.training.throughput import Throughput, peak_flops

# spike actions that must know before the update whether the step is a spike (one device read per step)
DECIDE_BEFORE_UPDATE = ("checkpoint", "rollback", "stop")


def fit(
    task: Task,
    config: Any,
    device: torch.device,
    *,
    callback: TrainCallback | None = None,
    overwrite: bool = False,
    resume: str | Path | Resumed | None = None,
) -> RunResult:
    """Train `task` as the resolved `config` says and write its run directory.

    Args:
        device: the resolved training device.
        resume: `auto` (the latest complete checkpoint in `config.log.out`; none: a fresh
            start), a run directory or a checkpoint file to continue from, or a `Resumed`
            checkpoint already loaded.

    Returns a `RunResult`: `completed`, `time_limit` (this session's `--max-time-seconds`
    spent before the run's end: checkpointed, and continued by a resume), `interrupted`
    (Ctrl-C or SIGTERM, checkpointed at a step boundary) or `failed` (non-finite steps in a
    row, a spike with `--spike-action stop`, too many rollbacks).
    """
    trainer = _setup(task, config, device, callback=callback, overwrite=overwrite, resume=resume)
    progress, session = trainer.run.progress, trainer.session
    with session.guard(progress, task) as stop:
        trainer.train(stop)
        # the end: a completed run is evaluated at its last step; every run ends with a checkpoint
        if session.status == "completed" and progress.last_eval_step != progress.step:
            trainer.evaluate()
        if progress.last_checkpoint_step != progress.step:
            trainer.save()
        progress.skipped_steps = trainer.run.counters.skipped()
    if trainer.step_losses is not None:
        trainer.step_losses.close()
    return session.finish(progress, task)


def _setup(
    task: Task,
    config: Any,
    device: torch.device,
    *,
    callback: TrainCallback | None,
    overwrite: bool,
    resume: str | Path | Resumed | None,
) -> _Trainer:
    """Check the run, open its directory, build the model and optimizer, and restore a checkpoint."""
    dist = task.dist
    if from_env().active and not dist.active:
        raise ConfigError(
            f"{type(task).__name__.removesuffix('Task').lower()} training runs on one process; "
            "under torchrun only `tfkit train pretrain` shares a run across processes"
        )
    if task.sharded and config.train.log_layer_stats:
        raise ConfigError("--log-layer-stats is not available with --parallel fsdp (the blocks' weights are sharded)")
    horizon = task.horizon()
    if config.optim.warmup_steps is None:  # resolved here, where the run's steps are known, and recorded
        config = config.with_updates({"optim.warmup_steps": default_warmup(horizon)})
    t, log = config.train, config.log
    if isinstance(resume, Resumed):  # resolved and loaded by the caller (the CLI, for the run's config)
        check_run_dir(Path(log.out))
        resumed: Resumed | None = resume
    elif resume is not None:
        checkpoint, loaded, skipped = resolve_resume(resume, Path(log.out))
        resumed = Resumed(checkpoint, loaded, skipped) if checkpoint is not None and loaded is not None else None
    else:
        resumed = None
    state = resumed.state if resumed is not None else None
    if resumed is not None:  # checked before anything in the run directory changes
        check_resumable(resumed.state, config, resumed.checkpoint, dist.world)
    if dist.main:
        session = RunSession.open(config, callback=callback, overwrite=overwrite, resuming=state is not None)
        remove_partial_saves(session.run_dir)  # the lock is ours: a temp file there is a killed save's
    else:
        session = FollowerSession(config)
    prepare_device(t.seed, device)
    compiled = compile_enabled(t, device)
    model = task.build(device, compiled)
    optimizer = build_optimizer(model, config.optim, device)
    run = RunState(
        progress=Progress(epoch=task.epoch()),
        counters=StepCounters(device, len(task.metric_names)),
        detector=SpikeDetector(t.spike_window, t.spike_sigma, t.spike_min_history, device),
        average=WeightAverage(model, config.optim.ema_decay) if config.optim.ema_decay > 0 else None,
    )
    spikes = SpikeLog(session.run_dir) if dist.main else _NOWHERE
    step_losses = StepLossLog(session.run_dir) if t.log_step_losses and dist.main else None
    session.start(
        model,
        device,
        compiled=compiled,
        horizon=horizon,
        meta=task.meta,
        resumed=resumed,
        logs=(spikes, step_losses),  # cut back with the trackers' logs
    )
    if state is not None:
        restore_state(state, model, optimizer, run, task)
        task.begin_step(max(run.progress.step - 1, 0))  # the stage of the latest step, for the rows
        set_rng_state(state["rng_ranks"][dist.rank] if dist.active else state["rng"])  # last: nothing above draws
    # sharded, the probe's forward is collective: every rank runs it, rank 0 logs it
    monitor = Monitor(t if dist.main or task.sharded else _UNMONITORED, model, task)
    if state is not None and not set(monitor.columns) <= set(_logged_columns(session.run_dir) or monitor.columns):
        monitor = Monitor(_UNMONITORED, model, task)  # a run logged without these columns goes on without them
    peak = peak_flops(device, t.peak_flops)  # of one device; mfu is over all the run's devices
    throughput = Throughput(device, _flops_per_token(model, task), peak * dist.world if peak else None)
    return _Trainer(
        task, config, device, horizon, session, model, optimizer, run, monitor, throughput, spikes, step_losses
    )


class _Trainer:
    """A run set up by `_setup`: `train` takes its steps, `evaluate` and `save` also end it."""

    def __init__(
        self,
        task: Task,
        config: Any,
        device: torch.device,
        horizon: int | None,
        session: RunSession,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        run: RunState,
        monitor: Monitor,
        throughput: Throughput,
        spikes: SpikeLog,
        step_losses: StepLossLog | None,
    ) -> None:
        self.task, self.config, self.device, self.horizon = task, config, device, horizon
        self.t, self.dist = config.train, task.dist
        self.session, self.model, self.optimizer, self.run = session, model, optimizer, run
        self.monitor, self.throughput, self.spikes, self.step_losses = monitor, throughput, spikes, step_losses
        self.params = [p for p in model.parameters() if p.requires_grad]
        train_columns, self.val_columns = task.columns()
        self.train_columns = train_columns + monitor.columns
        self.pending: list[tuple[int, torch.Tensor, torch.Tensor]] = []  # (step, spike flag, [loss, norm, limits])

    def train(self, stop: Any) -> None:
        """Optimizer steps until a stop criterion, Ctrl-C / SIGTERM (`stop`) or a failure."""
        progress, first_step = self.run.progress, self.run.progress.step  # a session out of time trains a step
        lr = lr_at(max(progress.step - 1, 0), self.config.optim, self.horizon)
        while not self._stopped(stop, first_step, lr):
            lr = lr_at(progress.step, self.config.optim, self.horizon)
            for group in self.optimizer.param_groups:  # a group may run at a multiple of the schedule's rate
                group["lr"] = lr * group.get("lr_scale", 1.0)
            taken = self.step()
            if taken is None:
                break
            if not taken:  # rolled back: the step is trained again
                continue
            if progress.step % self.config.log.log_every == 0:
                failed = self.log_train(lr)
                if failed is not None:
                    self.session.fail(failed)
                    break
            if self._eval_due():
                self.evaluate()
            if self.t.checkpoint_every is not None and progress.step % self.t.checkpoint_every == 0:
                self.save()
                self.session.checkpoint_written()

    def step(self) -> bool | None:
        """One optimizer step: micro-batches, clip, the spike and non-finite checks, the update.

        Returns True when the step was taken (or skipped on the device), False when a rollback
        undid it, None when the run must stop (the session says why).
        """
        t, progress, counters, optimizer = self.t, self.run.progress, self.run.counters, self.optimizer
        self.task.begin_step(progress.step)
        # a spike checkpoint replays this step: it keeps the data position and RNGs of before its batches
        before = BeforeStep.now(progress, self.task) if t.spike_action == "checkpoint" else None
        step_loss, step_metrics, batch = self._forward_backward()
        measured = self.monitor.enabled and (
            (progress.step + 1) % self.config.log.log_every == 0 or progress.step + 1 in (t.max_steps, self.horizon)
        )
        if measured:  # the logits of the logged micro-batch, gradients before clipping (counted as training time)
            self.monitor.before_update(batch)

        # clip, then decide: a non-finite step is skipped; a spike as --spike-action says
        if self.config.optim.grad_clip > 0:
            grad_norm = torch.nn.utils.clip_grad_norm_(self.params, self.config.optim.grad_clip, foreach=True)
        else:
            grad_norm = torch.nn.utils.get_total_norm([p.grad for p in self.params if p.grad is not None])
        if hasattr(grad_norm, "full_tensor"):  # sharded parameters (FSDP): a DTensor over the processes
            grad_norm = grad_norm.full_tensor()
        spike, limits = self.run.detector.test(step_loss, grad_norm)
        skip = counters.non_finite(step_loss, grad_norm)
        if t.spike_action == "skip":
            skip = skip | spike
        values = torch.cat([step_loss.view(1), grad_norm.view(1), limits])
        if t.spike_action in DECIDE_BEFORE_UPDATE and bool(spike):  # a device read, for these actions only
            row = [progress.step + 1, step_loss.item(), grad_norm.item(), *limits.tolist()]
            self.spikes.write(_spike_row(row, t.spike_action))
            if t.spike_action != "checkpoint":  # stop or rollback: the step's update is dropped
                optimizer.zero_grad(set_to_none=True)
                return False if self._after_dropped_spike() else None
            self.save(spike_checkpoint_path(self.session.run_dir, progress.step + 1), before)  # the state before
            self.pending.append((progress.step + 1, torch.zeros_like(spike), values))  # its row is written above
        else:
            self.pending.append((progress.step + 1, spike, values))
        self.run.detector.record(step_loss, grad_norm)  # after a spike checkpoint: it holds the window before

        # the update, dropped on the device when `skip`: the fused AdamW kernel skips it when found_inf is 1
        optimizer.found_inf = skip.float()  # type: ignore[attr-defined]
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if self.run.average is not None:
            self.run.average.update(progress.step, skip)
        counters.count(step_loss, step_metrics if self.task.metric_names else None, grad_norm, skip)
        if measured:
            self.monitor.after_update()
        progress.step += 1
        progress.epoch = self.task.epoch()
        return True

    def _forward_backward(self) -> tuple[torch.Tensor, torch.Tensor, Any]:
        """The micro-batches of a step, forward and backward: (step loss, step metrics, the last batch)."""
        task, progress, accum = self.task, self.run.progress, self.config.optim.grad_accum_steps
        step_loss = torch.zeros((), dtype=torch.float32, device=self.device)
        step_metrics = torch.zeros(len(task.metric_names), dtype=torch.float32, device=self.device)
        for micro in range(accum):
            started = time.perf_counter()
            batch = task.next_batch()
            self.throughput.data_wait(time.perf_counter() - started)
            with task.accumulating() if micro < accum - 1 else contextlib.nullcontext():
                loss, metrics = task.loss(batch)
                (loss / accum).backward()
            step_loss += loss.detach().float() / accum
            if metrics is not None:
                step_metrics += metrics.float() / accum
            progress.tokens_seen += task.batch_tokens(batch)
        if self.dist.active:  # the global batch's loss: every rank logs and decides on the same numbers
            step_loss, step_metrics = self.dist.mean(step_loss), self.dist.mean(step_metrics)
        return step_loss, step_metrics, batch

    def _after_dropped_spike(self) -> bool:
        """After a spike under `rollback` (or `stop`): the last checkpoint, keeping the data position past the spike.

        False when the run must stop instead (the session says why).
        """
        t, progress = self.t, self.run.progress
        if t.spike_action == "stop":
            self.session.fail(f"loss spike at step {progress.step + 1} (--spike-action stop)")
            return False
        why = roll_back(self.session.run_dir, self.model, self.optimizer, self.run, self.task, t.spike_max_rollbacks)
        if why is not None:
            self.session.fail(why)
            return False
        self.pending.clear()
        self.monitor.row()  # the measurement of the abandoned step is dropped
        self.session.truncate_logs(progress.step)
        if self.step_losses is not None:
            self.step_losses.continue_after(progress.step)
        return True

    def _stopped(self, stop: Any, first_step: int, lr: float) -> bool:
        """Whether the run stops before the next step; its last row and status are written when it does."""
        t, progress, session = self.t, self.run.progress, self.session
        epoch = progress.epoch if progress.epoch is not None else 0.0
        at_end = limit_reached(t, progress.step, progress.tokens_seen, epoch)
        time_up = time_is_up(t, session.session_elapsed(), session.elapsed())
        if not time_is_the_only_stop(t):
            time_up = time_up and progress.step > first_step
        # every rank stops at the same step (each has its own clock)
        signalled, at_end, time_up = self.dist.any(stop.requested, at_end, time_up)
        if not (signalled or at_end or time_up):
            return False
        # out of time before the run's end: the rows keep their cadence (the counters since the
        # last row go into the checkpoint), so the next session logs on as one run would
        paused = time_up and not (signalled or at_end or time_is_the_only_stop(t))
        due = progress.step > progress.last_log_step
        if paused and due:
            due = self.run.counters.failure(t.max_bad_steps, _spike_limit(t)) is not None
        failed = self.log_train(lr) if due else None
        if failed is not None:
            session.fail(failed)
        elif signalled:  # Ctrl-C or SIGTERM, here or on another rank
            session.interrupt(stop.signal or "SIGTERM")
        elif paused:
            session.out_of_time(progress.step, self.horizon)
        return True

    def _eval_due(self) -> bool:
        progress, t = self.run.progress, self.t
        due_by_epochs = (
            progress.epoch is not None
            and t.max_epochs_between_evals is not None
            and progress.epoch - progress.last_eval_epoch >= t.max_epochs_between_evals
        )
        return progress.step % t.eval_every == 0 or due_by_epochs

    def save(self, path: Path | None = None, before: BeforeStep | None = None) -> None:
        """A checkpoint of now, or with `before` of the step being taken: its data and RNGs as they were."""
        started = time.perf_counter()
        progress, dist, session = self.run.progress, self.dist, self.session
        progress.skipped_steps = self.run.counters.skipped()
        _write_steps(self.pending, self.spikes, self.step_losses, self.t.spike_action)  # the steps so far, with it
        self.pending.clear()
        # sharded: gathered to rank 0 (a collective); replicated, only rank 0 writes the average
        average = self.run.average if dist.main or self.task.sharded else None
        weights = full_state(self.model, self.optimizer, self.task.sharded, average)
        # each rank's generators (dropout masks differ between GPUs)
        rngs = dist.gather(before.rng if before is not None else rng_state())
        if dist.main:  # rank 0 writes; the others wait, so a rollback finds the file
            state = checkpoint_state(weights, self.run, self.task, self.config, session.elapsed(), dist.world, before)
            if dist.active:
                state["rng_ranks"] = rngs
            save_checkpoint(path or checkpoint_path(session.run_dir, progress.tokens_seen), state)
            if path is None:
                session.checkpoints_pruned(prune_checkpoints(session.run_dir, self.t.keep_last))
        dist.barrier()
        if path is None:
            progress.last_checkpoint_step = progress.step
        self.throughput.exclude(time.perf_counter() - started)

    def log_train(self, lr: float) -> str | None:
        """A train row for the steps since the last one (and their spikes); why the run must stop, if it must."""
        progress, counters = self.run.progress, self.run.counters
        _write_steps(self.pending, self.spikes, self.step_losses, self.t.spike_action)
        self.pending.clear()
        row = counters.train_row(
            progress, self.session.elapsed(), lr, self.task, self.throughput.row(progress.tokens_seen)
        )
        row.update(self.monitor.row())
        row = in_declared_order(row, self.train_columns, "train_log.csv")
        self.session.log_train(row)
        progress.last_log_step = progress.step
        progress.skipped_steps = row["skipped_steps"]
        return counters.failure(self.t.max_bad_steps, _spike_limit(self.t))

    def evaluate(self) -> None:
        """A val row (rank 0; the others take part when the model is sharded)."""
        progress, task = self.run.progress, self.task
        average = self.run.average.applied() if self.run.average is not None else contextlib.nullcontext()
        if not self.dist.main:  # rank 0 evaluates and logs; the others go on (sharded: they take part)
            if task.sharded:
                with average:  # each rank's shard of the average
                    task.evaluate()
            progress.last_eval_step = progress.step
            progress.last_eval_epoch = progress.epoch or 0.0
            return
        started = time.perf_counter()
        with average:
            metrics = task.evaluate()
        spent = time.perf_counter() - started
        progress.eval_time += spent
        self.throughput.exclude(spent)
        row = {
            **progress.position(task.count_column),
            "time_s": self.session.elapsed(),
            **task.stage_fields(),
            **metrics,
        }
        self.session.log_val(in_declared_order(row, self.val_columns, "val_log.csv"))
        progress.last_eval_step = progress.step
        progress.last_eval_epoch = progress.epoch or 0.0
        progress.last_val = {k: v for k, v in metrics.items() if not k[-1].isdigit()}


def _spike_limit(t: Any) -> int | None:
    """The skipped spikes in a row that fail the run (`--spike-action skip` only)."""
    return t.spike_max_consecutive_skips if t.spike_action == "skip" else None


def _flops_per_token(model: torch.nn.Module, task: Task) -> float | None:
    flops = getattr(model, "flops_per_token", None)
    return flops(task.shape()[1]) if flops is not None else None


def _logged_columns(run_dir: Path) -> list[str] | None:
    """The header of the run's train_log.csv, None when there is none."""
    import csv

    path = run_dir / "train_log.csv"
    if not path.is_file():
        return None
    with open(path, newline="", encoding="utf-8") as f:
        return next(csv.reader(f), None)


class _Nowhere:
    """The spike and step logs of a rank that writes no files."""

    def write(self, *args: Any) -> None:
        pass

    def check_continuable(self) -> None:
        pass

    def continue_after(self, step: int) -> None:
        pass


_NOWHERE: Any = _Nowhere()
# the monitor of a rank that logs nothing
_UNMONITORED = SimpleNamespace(log_logits=False, log_layer_stats=False)


def _spike_row(values: list[float], action: str) -> dict[str, Any]:
    step, loss, norm, loss_limit, norm_limit = values
    return {
        "step": int(step),
        "train_loss": loss,
        "grad_norm": norm,
        "loss_threshold": loss_limit,
        "grad_norm_threshold": norm_limit,
        "action": action,
    }


def _write_steps(
    pending: list[tuple[int, torch.Tensor, torch.Tensor]],
    spikes: SpikeLog,
    step_losses: StepLossLog | None,
    action: str,
) -> None:
    """The steps since the last train row: their spikes, and with --log-step-losses every step's loss.

    One device read for all of them (two without the step log and with a spike).
    """
    if not pending:
        return
    flags = torch.stack([flag for _, flag, _ in pending]).tolist()
    if step_losses is None and not any(flags):
        return
    values = torch.stack([v for _, _, v in pending]).tolist()
    for (step, _, _), flag, row in zip(pending, flags, values, strict=False):
        if flag:
            spikes.write(_spike_row([step, *row], action))
    if step_losses is not None:
        step_losses.write([(step, row[0], row[1]) for (step, _, _), row in zip(pending, values, strict=False)])
