"""The one training loop behind `tfkit train pretrain` (and `ablate`).

`train(config)` builds the data source, model and optimizer from a `RunConfig`, trains
until the first stop criterion, evaluates, checkpoints, and writes the run directory:

    train_config.json  train_log.csv  val_log.csv  checkpoints/<tokens>.pt  summary.json

Nothing here prints: progress goes to an optional `TrainCallback`. The step loop keeps
every per-step quantity (loss sums, non-finite counts) on the device and reads it back
only at logging points, so the host never waits on the GPU between steps.
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
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

import tfkit
from tfkit.config import DEFAULT_MAX_STEPS, RunConfig, SectionedConfig, TrainConfig
from tfkit.data.loaders import BatchCursor, ProcessSource, open_source, train_batches
from tfkit.errors import ConfigError
from tfkit.io import write_json_atomic
from tfkit.models.gpt import GPT
from tfkit.storage.uploader import RunPusher
from tfkit.tracking import CsvTracker, Tracker, TrackerGroup
from tfkit.training.checkpoint import checkpoint_path, rng_state, save_checkpoint
from tfkit.training.optim import build_optimizer
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


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {name}: CUDA is not available on this machine")
        index = int(name[5:]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise ConfigError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) here")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("--device mps: MPS is not available on this machine")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_config(config: RunConfig, source: ProcessSource) -> RunConfig:
    """Fill what the data decides (vocab, context), the default stop and the run directory."""
    updates: dict[str, Any] = {}
    model = config.model
    if model.vocab_size is None:
        updates["model.vocab_size"] = source.vocab_size
    elif model.vocab_size < source.vocab_size:
        raise ConfigError(f"vocab_size {model.vocab_size} is smaller than the data's vocabulary ({source.vocab_size})")
    if model.max_seq_len is None:
        updates["model.max_seq_len"] = config.data.seq_len
    elif model.max_seq_len < config.data.seq_len:
        raise ConfigError(f"--seq-len {config.data.seq_len} exceeds the model's max_seq_len {model.max_seq_len}")
    if not config.has_stop_criterion():
        updates["train.max_steps"] = DEFAULT_MAX_STEPS
    if config.log.out is None:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        updates["log.out"] = f"runs/{Path(config.data.data).name}-{stamp}"
    return config.with_updates(updates) if updates else config


def prepare_run_dir(run_dir: Path, overwrite: bool) -> None:
    """Create the run directory; refuse to mix a new run into an old one unless asked."""
    existing = [name for name in RUN_FILES if (run_dir / name).exists()]
    if existing and not overwrite:
        raise ConfigError(f"{run_dir} already holds a run ({existing[0]}); choose another --out or pass --overwrite")
    for name in existing:
        path = run_dir / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    run_dir.mkdir(parents=True, exist_ok=True)


def total_steps(config: RunConfig, steps_per_epoch: int) -> int | None:
    """The step horizon implied by the step, token and epoch limits (None: time only)."""
    t = config.train
    tokens_per_step = config.data.batch_size * config.data.seq_len * config.optim.grad_accum_steps
    limits = []
    if t.max_steps is not None:
        limits.append(t.max_steps)
    if t.max_tokens is not None:
        limits.append(math.ceil(t.max_tokens / tokens_per_step))
    if t.max_epochs is not None:
        limits.append(math.ceil(t.max_epochs * steps_per_epoch))
    return min(limits) if limits else None


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True
        )
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


def _autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    use_bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    if use_bf16:
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


TRAIN_COLUMNS = ("step", "tokens_seen", "epoch", "time_s", "lr", "batch_size", "seq_len", "train_loss", "grad_norm", "skipped_steps")
VAL_COLUMNS = ("step", "tokens_seen", "epoch", "time_s", "val_loss", "val_acc", "val_pplx")


def log_columns(seq_len: int, has_optimum: bool) -> tuple[list[str], list[str]]:
    """The columns of `train_log.csv` and `val_log.csv` for a run, in file order."""
    train_cols, val_cols = list(TRAIN_COLUMNS), list(VAL_COLUMNS)
    if has_optimum:
        positions = range(1, seq_len + 1)
        train_cols += [f"relative_loss_{i}" for i in positions]
        val_cols += ["optimal_loss", "excess_loss"]
        for prefix in ("val_loss", "optimal_loss", "val_relative_loss"):
            val_cols += [f"{prefix}_{i}" for i in positions]
    return train_cols, val_cols


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    source: ProcessSource,
    device: torch.device,
    precision: str,
    batch_size: int,
) -> dict[str, Any]:
    """Validation metrics; with a known optimum, also optimal/excess loss and per-position columns.

    Column suffix i is the index of the predicted token: `val_loss_<i>` is the loss on token i
    given tokens 0..i-1, the same i as `tfkit data optimal-loss`.
    """
    model.eval()
    tokens = source.val_tokens  # (N, T+1)
    seq_len = tokens.shape[1] - 1
    loss_sum = torch.zeros(seq_len, dtype=torch.float64, device=device)
    correct = torch.zeros(seq_len, dtype=torch.float64, device=device)
    for start in range(0, len(tokens), batch_size):
        window = torch.from_numpy(tokens[start : start + batch_size]).to(device)
        inputs, targets = window[:, :-1], window[:, 1:]
        with _autocast(device, precision):
            logits = model(inputs)  # (B, T, V)
        loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction="none")
        loss_sum += loss.view_as(targets).sum(0)
        correct += (logits.argmax(-1) == targets).sum(0)
    model.train()
    count = len(tokens)
    per_pos = (loss_sum / count).cpu().numpy()  # (T,)
    val_loss = float(per_pos.mean())
    row: dict[str, Any] = {
        "val_loss": val_loss,
        "val_acc": float((correct.sum() / (count * seq_len)).item()),
        "val_pplx": math.exp(min(val_loss, 700.0)),
    }
    if source.has_optimum:
        optimal = source.val_optimal.mean(0)  # (T,)
        row["optimal_loss"] = float(optimal.mean())
        # paired: same tokens, so the difference of means is the mean of per-token differences
        row["excess_loss"] = val_loss - row["optimal_loss"]
        for i in range(seq_len):
            row[f"val_loss_{i + 1}"] = float(per_pos[i])
        for i in range(seq_len):
            row[f"optimal_loss_{i + 1}"] = float(optimal[i])
        for i in range(seq_len):
            row[f"val_relative_loss_{i + 1}"] = float(per_pos[i] / optimal[i]) if optimal[i] > 0 else math.nan
    return row


def train(
    config: RunConfig,
    *,
    callback: TrainCallback | None = None,
    overwrite: bool = False,
) -> RunResult:
    """Train one model as `config` says and write its run directory.

    Returns a `RunResult` whose status is `completed`, `interrupted` (Ctrl-C: stopped at a
    step boundary with a checkpoint) or `failed` (too many non-finite steps in a row).
    Raises `TfkitError` for bad input before anything is written. With `log.s3_uri` the
    run directory is pushed to `<s3_uri>/<run name>/` at the end (described in
    `RunResult.pushed`); a push that fails then raises `StorageError`, the run saved on disk.
    """
    callback = callback or TrainCallback()
    device = resolve_device(config.train.device)
    source = open_source(config.data, config.train.seed)
    config = resolve_config(config, source)
    run_dir = Path(config.log.out)  # type: ignore[arg-type]
    pusher = RunPusher.open(run_dir, config.log.s3_uri, overwrite=overwrite) if config.log.s3_uri else None
    prepare_run_dir(run_dir, overwrite)

    seed_everything(config.train.seed)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    model = GPT(config.model).to(device)
    use_compile = config.train.compile == "on" or (config.train.compile == "auto" and device.type == "cuda")
    step_model = torch.compile(model) if use_compile else model
    optimizer = build_optimizer(model, config.optim, device)

    per_epoch = source.sequences_per_epoch // config.data.batch_size
    steps_per_epoch = max(1, per_epoch // config.optim.grad_accum_steps)
    horizon = total_steps(config, steps_per_epoch)
    num_params = model.num_params()
    num_params_ne = model.num_params(non_embedding=True)
    meta = {
        **run_meta(device, use_compile),
        "data_source": source.description,
        # token shards name their tokenizer; `tfkit generate` and `train sft --init` read it here
        "tokenizer_path": getattr(source, "tokenizer_path", None),
        "tokenizer_sha256": getattr(source, "tokenizer_sha256", None),
        "num_params": num_params,
        "num_params_non_embedding": num_params_ne,
        "total_steps": horizon,
        "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    write_json_atomic(run_dir / "train_config.json", {**config.to_dict(), "meta": meta})

    tracker = open_trackers(config, run_dir, meta)
    callback.on_start(
        {"run_dir": str(run_dir), "total_steps": horizon, "config": config.to_flat_dict(), **meta, "device": str(device)}
    )

    progress = _Progress()
    flag = _Flag()
    t0 = time.perf_counter()
    status, message = "completed", None

    def summary() -> dict[str, Any]:
        wall = time.perf_counter() - t0
        train_time = max(wall - progress.eval_time, 1e-9)
        return {
            "status": status,
            "message": message,
            "step": progress.step,
            "tokens_seen": progress.tokens_seen,
            "epoch": progress.epoch,
            "wall_time_s": wall,
            "tokens_per_s": progress.tokens_seen / train_time,
            "num_params": num_params,
            "num_params_non_embedding": num_params_ne,
            "skipped_steps": int(bad_total.item()),
            **progress.last_val,
            "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }

    bad_total = torch.zeros((), dtype=torch.long, device=device)
    try:
        with _interrupt_flag(flag):
            status, message = _run_steps(
                config, model, step_model, optimizer, source, device, horizon,
                tracker, callback, progress, flag, t0, bad_total, pusher,
            )  # fmt: skip
            if status == "completed" and progress.last_eval_step != progress.step:
                _eval_and_log(config, step_model, source, device, tracker, callback, progress, t0)
            if progress.last_checkpoint_step != progress.step:
                _save(run_dir, config, model, optimizer, progress)
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
    pushed = pusher.finish() if pusher is not None else None  # waits for the final push
    return RunResult(run_dir=run_dir, status=status, summary=final, message=message, pushed=pushed)


def _run_steps(
    config: RunConfig,
    model: GPT,
    step_model: torch.nn.Module,
    optimizer: torch.optim.AdamW,
    source: ProcessSource,
    device: torch.device,
    horizon: int | None,
    tracker: Tracker,
    callback: TrainCallback,
    progress: _Progress,
    flag: _Flag,
    t0: float,
    bad_total: torch.Tensor,
    pusher: RunPusher | None = None,
) -> tuple[str, str | None]:
    """The step loop. Returns (status, message) once a stop criterion, Ctrl-C or failure ends it."""
    t = config.train
    batch_size, seq_len = config.data.batch_size, config.data.seq_len
    accum = config.optim.grad_accum_steps
    cursor = progress.cursor
    batches = train_batches(source, batch_size, cursor)
    per_epoch = source.sequences_per_epoch // batch_size
    params = [p for p in model.parameters() if p.requires_grad]
    run_dir = Path(config.log.out)  # type: ignore[arg-type]

    # device-side accumulators, read only at logging points
    loss_sum = torch.zeros((), dtype=torch.float32, device=device)
    good_steps = torch.zeros((), dtype=torch.long, device=device)
    consecutive_bad = torch.zeros((), dtype=torch.long, device=device)
    worst_run = torch.zeros((), dtype=torch.long, device=device)
    norm_last = torch.zeros((), dtype=torch.float32, device=device)

    last_logged = 0

    def log_row() -> tuple[str, str] | None:
        """A train row for the steps since the last one; ("failed", why) after too many bad steps."""
        nonlocal last_logged
        n_good = int(good_steps.item())
        row: dict[str, Any] = {
            "step": progress.step,
            "tokens_seen": progress.tokens_seen,
            "epoch": progress.epoch,
            "time_s": time.perf_counter() - t0,
            "lr": lr,
            "batch_size": batch_size * accum,
            "seq_len": seq_len,
            "train_loss": float(loss_sum.item()) / n_good if n_good else math.nan,
            "grad_norm": float(norm_last.item()),
            "skipped_steps": int(bad_total.item()),
        }
        if source.has_optimum:
            # per-position relative loss on the last micro-batch of this step
            model_pos = per_token.detach().view_as(targets).float().mean(0).cpu().numpy()
            optimal_pos = source.optimal_losses(window_np).mean(0)
            for i in range(seq_len):
                row[f"relative_loss_{i + 1}"] = float(model_pos[i] / optimal_pos[i]) if optimal_pos[i] > 0 else math.nan
        tracker.log_train(row)
        last_logged = progress.step
        callback.on_log(row)
        loss_sum.zero_()
        good_steps.zero_()
        if int(worst_run.item()) >= t.max_bad_steps:
            return "failed", (
                f"{int(worst_run.item())} non-finite steps in a row (loss or gradient norm); "
                "lower --lr or raise --warmup-steps"
            )
        return None

    while True:
        stopping = "interrupted" if flag.requested else None
        elapsed = time.perf_counter() - t0
        if stopping is None and stop_reached(t, progress.step, progress.tokens_seen, progress.epoch, elapsed):
            stopping = "completed"
        if stopping is not None:
            failed = log_row() if progress.step > last_logged else None  # the log ends where the run does
            if failed is not None:
                return failed
            return stopping, ("interrupted by Ctrl-C" if stopping == "interrupted" else None)

        lr = lr_at(progress.step, config.optim, horizon)
        for group in optimizer.param_groups:
            group["lr"] = lr
        step_loss = torch.zeros((), dtype=torch.float32, device=device)
        for _ in range(accum):
            window_np = next(batches)  # (B, T+1)
            window = torch.from_numpy(window_np)
            if device.type == "cuda":
                window = window.pin_memory().to(device, non_blocking=True)
            else:
                window = window.to(device)
            inputs, targets = window[:, :-1], window[:, 1:]
            with _autocast(device, t.precision):
                logits = step_model(inputs)  # (B, T, V)
            per_token = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction="none")
            loss = per_token.mean()
            (loss / accum).backward()
            step_loss += loss.detach() / accum

        if config.optim.grad_clip > 0:
            grad_norm = torch.nn.utils.clip_grad_norm_(params, config.optim.grad_clip, foreach=True)
        else:
            grad_norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
        finite = torch.isfinite(step_loss) & torch.isfinite(grad_norm)
        # the fused AdamW kernel skips the whole update when found_inf is 1, on device
        optimizer.found_inf = (~finite).float()  # type: ignore[attr-defined]
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

        bad = (~finite).long()
        bad_total += bad
        consecutive_bad.mul_(bad).add_(bad)
        torch.maximum(worst_run, consecutive_bad, out=worst_run)
        loss_sum += torch.where(finite, step_loss, torch.zeros_like(step_loss))
        good_steps += finite.long()
        norm_last = grad_norm.detach().float()

        progress.step += 1
        progress.tokens_seen += batch_size * seq_len * accum
        progress.epoch = cursor.epoch + cursor.batch / per_epoch

        if progress.step % config.log.log_every == 0:
            failed = log_row()
            if failed is not None:
                return failed

        due_by_epochs = (
            t.max_epochs_between_evals is not None
            and progress.epoch - progress.last_eval_epoch >= t.max_epochs_between_evals
        )
        if progress.step % t.eval_every == 0 or due_by_epochs:
            _eval_and_log(config, step_model, source, device, tracker, callback, progress, t0)
        if t.checkpoint_every is not None and progress.step % t.checkpoint_every == 0:
            _save(run_dir, config, model, optimizer, progress)
            if pusher is not None and config.log.s3_every_checkpoint:
                pusher.push_soon()  # background thread: training goes on


def _eval_and_log(
    config: RunConfig,
    model: torch.nn.Module,
    source: ProcessSource,
    device: torch.device,
    tracker: Tracker,
    callback: TrainCallback,
    progress: _Progress,
    t0: float,
) -> None:
    start = time.perf_counter()
    metrics = evaluate(model, source, device, config.train.precision, config.data.batch_size)
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
    progress.last_val = {k: v for k, v in metrics.items() if not k[-1].isdigit()}
    tracker.log_val(row)
    callback.on_eval(row)


def _save(run_dir: Path, config: RunConfig, model: GPT, optimizer: torch.optim.Optimizer, progress: _Progress) -> None:
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "step": progress.step,
        "tokens_seen": progress.tokens_seen,
        "epoch": progress.epoch,
        "data_cursor": {"epoch": progress.cursor.epoch, "batch": progress.cursor.batch},
        "config": config.to_dict(),
        "rng": rng_state(),
        "tfkit_version": tfkit.__version__,
    }
    save_checkpoint(checkpoint_path(run_dir, progress.tokens_seen), state)
    progress.last_checkpoint_step = progress.step
