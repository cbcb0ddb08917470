"""The language-model pretraining loop behind `tfkit train pretrain` (and `ablate`).

`train(config)` builds the data source, model and optimizer from a `RunConfig`, trains
until the first stop criterion, evaluates, checkpoints, and writes the run directory:

    train_config.json  train_log.csv  val_log.csv  checkpoints/<tokens>.pt  summary.json

This module owns what is particular to pretraining: token windows, the cross-entropy
loss, `evaluate` (with the optimal-loss columns of synthetic processes) and the
checkpoint contents. The run lifecycle and the optimizer step shared with `tfkit train
icl`, `sft` and `dpo` are `tfkit.training.session` (names such as `TrainCallback` and
`RunResult` are importable from here too). Nothing here prints: progress goes to an
optional `TrainCallback`.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

import tfkit
from tfkit.config import DEFAULT_MAX_STEPS, RunConfig
from tfkit.data.loaders import BatchCursor, ProcessSource, open_source, train_batches
from tfkit.errors import ConfigError
from tfkit.models.gpt import GPT
from tfkit.training.checkpoint import checkpoint_path, rng_state, save_checkpoint
from tfkit.training.optim import build_optimizer

# The run lifecycle lives in tfkit.training.session; RUN_FILES, _Flag, _interrupt_flag,
# open_trackers, prepare_run_dir, run_meta, seed_everything and stop_reached are imported
# only to stay importable from here.
from tfkit.training.session import (  # noqa: F401
    RUN_FILES,
    Progress,
    RunResult,
    RunSession,
    StepHooks,
    TrainCallback,
    _Flag,
    _interrupt_flag,
    compile_enabled,
    open_trackers,
    prepare_device,
    prepare_run_dir,
    run_meta,
    seed_everything,
    stop_reached,
)


@dataclass
class _Progress(Progress):
    """Progress through epochs of a finite data set, with the batch cursor checkpoints resume from."""

    epoch: float | None = 0.0
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
    device = resolve_device(config.train.device)
    source = open_source(config.data, config.train.seed)
    config = resolve_config(config, source)
    session = RunSession.open(config, callback=callback, overwrite=overwrite)
    run_dir = session.run_dir

    prepare_device(config.train.seed, device)
    model = GPT(config.model).to(device)
    use_compile = compile_enabled(config.train, device)
    step_model = torch.compile(model) if use_compile else model
    optimizer = build_optimizer(model, config.optim, device)

    t = config.train
    batch_size, seq_len = config.data.batch_size, config.data.seq_len
    accum = config.optim.grad_accum_steps
    per_epoch = source.sequences_per_epoch // batch_size
    horizon = total_steps(config, max(1, per_epoch // accum))
    session.start(
        model,
        device,
        compiled=use_compile,
        horizon=horizon,
        meta={
            "data_source": source.description,
            # token shards name their tokenizer; `tfkit generate` and `train sft --init` read it here
            "tokenizer_path": getattr(source, "tokenizer_path", None),
            "tokenizer_sha256": getattr(source, "tokenizer_sha256", None),
        },
    )

    progress = _Progress()
    cursor = progress.cursor
    batches = train_batches(source, batch_size, cursor)
    # the last micro-batch of the latest step, for the per-position relative-loss columns
    window_np: Any = None
    per_token = targets = torch.empty(0)

    def step() -> tuple[torch.Tensor, None]:
        nonlocal window_np, per_token, targets
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
        return step_loss, None

    def advance() -> None:
        progress.tokens_seen += batch_size * seq_len * accum
        progress.epoch = cursor.epoch + cursor.batch / per_epoch

    def relative_losses() -> dict[str, float]:
        """Per-position relative loss on the last micro-batch of the logged step (synthetic processes only)."""
        if not source.has_optimum:
            return {}
        model_pos = per_token.detach().view_as(targets).float().mean(0).cpu().numpy()
        optimal_pos = source.optimal_losses(window_np).mean(0)
        return {
            f"relative_loss_{i + 1}": float(model_pos[i] / optimal_pos[i]) if optimal_pos[i] > 0 else math.nan
            for i in range(seq_len)
        }

    def save() -> None:
        state = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "step": progress.step,
            "tokens_seen": progress.tokens_seen,
            "epoch": progress.epoch,
            "data_cursor": {"epoch": cursor.epoch, "batch": cursor.batch},
            "config": config.to_dict(),
            "rng": rng_state(),
            "tfkit_version": tfkit.__version__,
        }
        save_checkpoint(checkpoint_path(run_dir, progress.tokens_seen), state)

    hooks = StepHooks(
        step=step,
        advance=advance,
        shape=lambda: (batch_size * accum, seq_len),
        evaluate=lambda: evaluate(step_model, source, device, t.precision, batch_size),
        save=save,
        train_fields=relative_losses,
    )
    return session.run(progress, optimizer, hooks)
