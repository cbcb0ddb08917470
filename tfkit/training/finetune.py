"""The training loop of `tfkit train sft` and `tfkit train dpo`: a GPT from `--init`, one objective.

`run_finetune(config, objective, init)` trains the `--init` model on the objective's
batches and writes the same run directory as `tfkit train pretrain`:

    train_config.json  train_log.csv  val_log.csv  checkpoints/<tokens>.pt  summary.json

An `Objective` owns the data and the loss (tfkit.training.sft, tfkit.training.dpo):
it yields host batches, turns one into a loss and a vector of train metrics, and
evaluates. The loop around it is the pretraining one: AdamW and its schedule, gradient
accumulation and clipping, non-finite step skipping, stop criteria, evaluation and
checkpoint cadence, trackers (CSV, wandb), Ctrl-C at a step boundary, the S3 push; the
helpers are those of `tfkit.training.loop`. `tokens_seen` counts real (unpadded) tokens.

Checkpoints hold the resolved config (its `model` section is the `--init` model's) and
the tokenizer the data was made with, so a run can be the next `--init` and
`tfkit generate` finds its tokenizer.
"""

from __future__ import annotations

import contextlib
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

import tfkit
from tfkit.data.loaders import BatchCursor
from tfkit.io import write_json_atomic
from tfkit.models.gpt import GPT
from tfkit.tracking import Tracker
from tfkit.training.checkpoint import checkpoint_path, rng_state, save_checkpoint
from tfkit.training.load import LoadedRun
from tfkit.training.loop import (
    RunResult,
    TrainCallback,
    _Flag,
    _interrupt_flag,
    open_trackers,
    prepare_run_dir,
    resolve_device,
    run_meta,
    seed_everything,
    stop_reached,
)
from tfkit.training.optim import build_optimizer
from tfkit.training.schedule import lr_at


class Objective(ABC):
    """Data and loss of one kind of fine-tuning; `tfkit.training.sft` and `.dpo` implement it."""

    #: names of the metric vector `step` returns, logged after train_loss (averaged between log points)
    train_metrics: tuple[str, ...] = ()
    #: the rows `batch_size` counts (examples, packed rows, pairs)
    batch_size: int = 1
    seq_len: int = 1

    def setup(self, model: GPT, device: torch.device, precision: str) -> None:
        """Called once the model is on its device, before the first step."""

    @abstractmethod
    def batches_in_epoch(self, epoch: int) -> int:
        """Micro-batches in epoch `epoch` (packing makes it depend on the epoch)."""

    @abstractmethod
    def train_batches(self, cursor: BatchCursor) -> Iterator[dict[str, Any]]:
        """Endless host micro-batches, advancing `cursor`."""

    @abstractmethod
    def step(self, model: torch.nn.Module, batch: dict[str, Any], device: torch.device,
             precision: str) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        """(loss with a graph, detached metric vector of len(train_metrics)) of one micro-batch."""

    def tokens(self, batch: dict[str, Any]) -> int:
        return int(batch["lengths"].sum())

    @abstractmethod
    def evaluate(self, model: GPT, device: torch.device, precision: str) -> dict[str, Any]:
        """The validation metrics (`val_loss` first), logged as one val_log.csv row."""


def to_device(array: Any, device: torch.device) -> torch.Tensor:
    tensor = torch.from_numpy(array)
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


@dataclass
class _Progress:
    step: int = 0
    tokens_seen: int = 0
    epoch: float = 0.0
    last_eval_step: int = -1
    last_eval_epoch: float = 0.0
    last_checkpoint_step: int = -1
    eval_time: float = 0.0
    last_val: dict[str, Any] = field(default_factory=dict)
    cursor: BatchCursor = field(default_factory=BatchCursor)


def total_steps(config: Any, steps_per_epoch: int, tokens_per_epoch: int) -> int | None:
    """The step horizon of the step, token and epoch limits (None: time only)."""
    t = config.train
    limits = []
    if t.max_steps is not None:
        limits.append(t.max_steps)
    if t.max_tokens is not None:
        tokens_per_step = max(1, tokens_per_epoch // max(steps_per_epoch, 1))
        limits.append(math.ceil(t.max_tokens / tokens_per_step))
    if t.max_epochs is not None:
        limits.append(math.ceil(t.max_epochs * steps_per_epoch))
    return min(limits) if limits else None


def run_finetune(
    config: Any,
    objective: Objective,
    init: LoadedRun,
    *,
    data_meta: dict[str, Any],
    tokenizer: dict[str, Any],
    callback: TrainCallback | None = None,
    overwrite: bool = False,
) -> RunResult:
    """Train the `--init` model on `objective` as the resolved `config` says; write the run directory.

    Args:
        data_meta: what to record about the data in `train_config.json` (`data_source` first).
        tokenizer: `tokenizer_path` and `tokenizer_sha256` of the data, saved with the run.
    """
    from tfkit.storage.uploader import RunPusher

    callback = callback or TrainCallback()
    device = resolve_device(config.train.device)
    run_dir = Path(config.log.out)
    pusher = RunPusher.open(run_dir, config.log.s3_uri, overwrite=overwrite) if config.log.s3_uri else None
    prepare_run_dir(run_dir, overwrite)

    seed_everything(config.train.seed)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    model = init.build(device)
    objective.setup(model, device, config.train.precision)
    use_compile = config.train.compile == "on" or (config.train.compile == "auto" and device.type == "cuda")
    step_model = torch.compile(model) if use_compile else model
    optimizer = build_optimizer(model, config.optim, device)

    accum = config.optim.grad_accum_steps
    steps_per_epoch = max(1, objective.batches_in_epoch(0) // accum)
    horizon = total_steps(config, steps_per_epoch, data_meta.get("tokens_per_epoch", 0))
    num_params, num_params_ne = model.num_params(), model.num_params(non_embedding=True)
    meta = {
        **run_meta(device, use_compile),
        **data_meta,
        "init_checkpoint": str(init.checkpoint),
        **tokenizer,
        "num_params": num_params,
        "num_params_non_embedding": num_params_ne,
        "total_steps": horizon,
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    write_json_atomic(run_dir / "train_config.json", {**config.to_dict(), "meta": meta})
    tracker = open_trackers(config, run_dir, meta)
    callback.on_start(
        {
            "run_dir": str(run_dir),
            "total_steps": horizon,
            "config": config.to_flat_dict(),
            **meta,
            "device": str(device),
        }
    )

    progress = _Progress()
    flag = _Flag()
    t0 = time.perf_counter()
    status, message = "completed", None
    bad_total = torch.zeros((), dtype=torch.long, device=device)

    def summary() -> dict[str, Any]:
        wall = time.perf_counter() - t0
        return {
            "status": status,
            "message": message,
            "step": progress.step,
            "tokens_seen": progress.tokens_seen,
            "epoch": progress.epoch,
            "wall_time_s": wall,
            "tokens_per_s": progress.tokens_seen / max(wall - progress.eval_time, 1e-9),
            "num_params": num_params,
            "num_params_non_embedding": num_params_ne,
            "skipped_steps": int(bad_total.item()),
            **progress.last_val,
            "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }

    def evaluate_and_log() -> None:
        start = time.perf_counter()
        metrics = objective.evaluate(model, device, config.train.precision)
        progress.eval_time += time.perf_counter() - start
        row = {
            "step": progress.step,
            "tokens_seen": progress.tokens_seen,
            "epoch": progress.epoch,
            "time_s": time.perf_counter() - t0,
            **metrics,
        }
        progress.last_eval_step = progress.step
        progress.last_eval_epoch = progress.epoch
        progress.last_val = metrics
        tracker.log_val(row)
        callback.on_eval(row)

    def save() -> None:
        state = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "step": progress.step,
            "tokens_seen": progress.tokens_seen,
            "epoch": progress.epoch,
            "data_cursor": {"epoch": progress.cursor.epoch, "batch": progress.cursor.batch},
            "config": config.to_dict(),
            "tokenizer": tokenizer,
            "rng": rng_state(),
            "tfkit_version": tfkit.__version__,
        }
        save_checkpoint(checkpoint_path(run_dir, progress.tokens_seen), state)
        progress.last_checkpoint_step = progress.step

    try:
        with _interrupt_flag(flag):
            status, message = _run_steps(
                config, model, step_model, optimizer, objective, device, horizon, tracker, callback,
                progress, flag, t0, bad_total, evaluate_and_log, save, pusher,
            )  # fmt: skip
            if status == "completed" and progress.last_eval_step != progress.step:
                evaluate_and_log()
            if progress.last_checkpoint_step != progress.step:
                save()
    except BaseException as exc:
        status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
        message = message or (f"{type(exc).__name__}: {exc}" if status == "failed" else "interrupted")
        with contextlib.suppress(Exception):
            write_json_atomic(run_dir / "summary.json", summary())
        with contextlib.suppress(Exception):
            tracker.close()
        if pusher is not None:
            pusher.abandon()
        raise
    final = summary()
    write_json_atomic(run_dir / "summary.json", final)
    tracker.log_summary(final)
    tracker.close()
    callback.on_end(final)
    pushed = pusher.finish() if pusher is not None else None
    return RunResult(run_dir=run_dir, status=status, summary=final, message=message, pushed=pushed)


def _run_steps(
    config: Any,
    model: GPT,
    step_model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    objective: Objective,
    device: torch.device,
    horizon: int | None,
    tracker: Tracker,
    callback: TrainCallback,
    progress: _Progress,
    flag: _Flag,
    t0: float,
    bad_total: torch.Tensor,
    evaluate_and_log: Any,
    save: Any,
    pusher: Any,
) -> tuple[str, str | None]:
    """The step loop. Returns (status, message) once a stop criterion, Ctrl-C or failure ends it."""
    t = config.train
    accum = config.optim.grad_accum_steps
    cursor = progress.cursor
    batches = objective.train_batches(cursor)
    params = [p for p in model.parameters() if p.requires_grad]
    n_metrics = len(objective.train_metrics)

    # device-side accumulators, read only at logging points
    loss_sum = torch.zeros((), dtype=torch.float32, device=device)
    metric_sum = torch.zeros(n_metrics, dtype=torch.float32, device=device)
    good_steps = torch.zeros((), dtype=torch.long, device=device)
    consecutive_bad = torch.zeros((), dtype=torch.long, device=device)
    worst_run = torch.zeros((), dtype=torch.long, device=device)
    norm_last = torch.zeros((), dtype=torch.float32, device=device)

    while True:
        if flag.requested:
            return "interrupted", "interrupted by Ctrl-C"
        if stop_reached(t, progress.step, progress.tokens_seen, progress.epoch, time.perf_counter() - t0):
            return "completed", None

        lr = lr_at(progress.step, config.optim, horizon)
        for group in optimizer.param_groups:
            group["lr"] = lr
        step_loss = torch.zeros((), dtype=torch.float32, device=device)
        step_metrics = torch.zeros(n_metrics, dtype=torch.float32, device=device)
        for _ in range(accum):
            batch = next(batches)
            loss, metrics = objective.step(step_model, batch, device, t.precision)
            (loss / accum).backward()
            step_loss += loss.detach().float() / accum
            step_metrics += metrics.float() / accum
            progress.tokens_seen += objective.tokens(batch)

        if config.optim.grad_clip > 0:
            grad_norm = torch.nn.utils.clip_grad_norm_(params, config.optim.grad_clip, foreach=True)
        else:
            grad_norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
        finite = torch.isfinite(step_loss) & torch.isfinite(grad_norm)
        optimizer.found_inf = (~finite).float()  # type: ignore[attr-defined]  # fused AdamW skips on device
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        bad = (~finite).long()
        bad_total += bad
        consecutive_bad.mul_(bad).add_(bad)
        torch.maximum(worst_run, consecutive_bad, out=worst_run)
        loss_sum += torch.where(finite, step_loss, torch.zeros_like(step_loss))
        metric_sum += torch.where(finite, step_metrics, torch.zeros_like(step_metrics))
        good_steps += finite.long()
        norm_last = grad_norm.detach().float()

        progress.step += 1
        per_epoch = max(1, objective.batches_in_epoch(cursor.epoch))
        progress.epoch = cursor.epoch + cursor.batch / per_epoch

        if progress.step % config.log.log_every == 0:
            n_good = int(good_steps.item())
            means = (metric_sum / max(n_good, 1)).tolist()
            row: dict[str, Any] = {
                "step": progress.step,
                "tokens_seen": progress.tokens_seen,
                "epoch": progress.epoch,
                "time_s": time.perf_counter() - t0,
                "lr": lr,
                "batch_size": objective.batch_size * accum,
                "seq_len": objective.seq_len,
                "train_loss": float(loss_sum.item()) / n_good if n_good else math.nan,
                **{name: (value if n_good else math.nan) for name, value in zip(objective.train_metrics, means)},
                "grad_norm": float(norm_last.item()),
                "skipped_steps": int(bad_total.item()),
            }
            tracker.log_train(row)
            callback.on_log(row)
            loss_sum.zero_()
            metric_sum.zero_()
            good_steps.zero_()
            if int(worst_run.item()) >= t.max_bad_steps:
                return "failed", (
                    f"{int(worst_run.item())} non-finite steps in a row (loss or gradient norm); "
                    "lower --lr or raise --warmup-steps"
                )

        due_by_epochs = (
            t.max_epochs_between_evals is not None
            and progress.epoch - progress.last_eval_epoch >= t.max_epochs_between_evals
        )
        if progress.step % t.eval_every == 0 or due_by_epochs:
            evaluate_and_log()
        if t.checkpoint_every is not None and progress.step % t.checkpoint_every == 0:
            save()
            if pusher is not None and config.log.s3_every_checkpoint:
                pusher.push_soon()


def prepare_finetune(config: Any) -> tuple[Any, LoadedRun, Any]:
    """Check --init and --data and open both: (config, init, dataset). Raises `TfkitError` on bad input."""
    from tfkit.config import ModelConfig
    from tfkit.data.chat import open_chat_dataset
    from tfkit.errors import ConfigError, DataError
    from tfkit.training.load import load_run

    config.check_inputs()
    if config.model != ModelConfig():
        raise ConfigError(f"the model of `tfkit train {config.kind}` comes from --init; model options cannot be set")
    init = load_run(config.objective.init, "--init")
    dataset = open_chat_dataset(config.data.data, config.kind)
    vocab = init.model_config.vocab_size
    if dataset.vocab_size > vocab:
        raise DataError(
            f"--data {dataset.path} uses a vocabulary of {dataset.vocab_size:,} ids but the --init model has "
            f"{vocab:,}: tokenize with the tokenizer the --init model was trained with"
        )
    if init.tokenizer_sha256 and dataset.tokenizer_sha256 and init.tokenizer_sha256 != dataset.tokenizer_sha256:
        raise DataError(
            f"--data {dataset.path} was tokenized with {dataset.tokenizer_path}, not with the tokenizer of the "
            f"--init model ({init.tokenizer_path}); tokenize it with that one"
        )
    context = init.model_config.max_seq_len
    if config.data.seq_len is not None and config.data.seq_len > context:
        raise ConfigError(f"--seq-len {config.data.seq_len} exceeds the --init model's context of {context} tokens")
    return config, init, dataset


def tokenizer_record(init: LoadedRun, dataset: Any) -> dict[str, Any]:
    """The tokenizer to save with the run: the data's, else the --init model's."""
    if dataset.tokenizer_path:
        return {"tokenizer_path": dataset.tokenizer_path, "tokenizer_sha256": dataset.tokenizer_sha256}
    return {"tokenizer_path": init.tokenizer_path, "tokenizer_sha256": init.tokenizer_sha256}
