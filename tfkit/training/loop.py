"""Pretraining, behind `tfkit train pretrain` (and `ablate`): next-token prediction on a token source.

`train(config)` opens the data (a built-in process or token shards), resolves the config
and hands a `PretrainTask` to the one training loop, `tfkit.training.fit.fit`, which
writes the run directory:

    train_config.json  train_log.csv  val_log.csv  spikes.csv  checkpoints/<tokens>.pt  summary.json

This module owns what is particular to pretraining: token windows, the cross-entropy
loss, `evaluate` (with the optimal-loss columns of synthetic processes) and the data
position a checkpoint resumes from. Nothing here prints: progress goes to an optional
`TrainCallback`.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, Unpack

import torch
import torch.nn.functional as F

from tfkit.config import DEFAULT_MAX_STEPS, RunConfig
from tfkit.data.loaders import BatchCursor, ProcessSource, open_source, train_batches
from tfkit.errors import ConfigError
from tfkit.models.gpt import GPT
from tfkit.training import distributed
from tfkit.training.columns import pretrain_columns
from tfkit.training.device import autocast, evaluating, resolve_device
from tfkit.training.distributed import SINGLE, Dist
from tfkit.training.fit import fit
from tfkit.training.objectives import z_loss
from tfkit.training.session import RunArgs, RunResult, TrainCallback
from tfkit.training.task import Task

__all__ = ["PretrainTask", "RunResult", "TrainCallback", "evaluate", "train"]


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


def total_steps(config: RunConfig, steps_per_epoch: int, world: int = 1) -> int | None:
    """The step horizon implied by the step, token and epoch limits (None: time only); `world` processes."""
    t = config.train
    tokens_per_step = config.data.batch_size * config.data.seq_len * config.optim.grad_accum_steps * world
    limits = []
    if t.max_steps is not None:
        limits.append(t.max_steps)
    if t.max_tokens is not None:
        limits.append(math.ceil(t.max_tokens / tokens_per_step))
    if t.max_epochs is not None:
        limits.append(math.ceil(t.max_epochs * steps_per_epoch))
    return min(limits) if limits else None


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
    with evaluating(model):
        tokens = source.val_tokens  # (N, T+1)
        seq_len = tokens.shape[1] - 1
        loss_sum = torch.zeros(seq_len, dtype=torch.float64, device=device)
        correct = torch.zeros(seq_len, dtype=torch.float64, device=device)
        for start in range(0, len(tokens), batch_size):
            window = torch.from_numpy(tokens[start : start + batch_size]).to(device)
            inputs, targets = window[:, :-1], window[:, 1:]
            with autocast(device, precision):
                logits = model(inputs)  # (B, T, V)
            loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction="none")
            loss_sum += loss.view_as(targets).sum(0)
            correct += (logits.argmax(-1) == targets).sum(0)
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


class PretrainTask(Task):
    """Next-token prediction on windows of a token source (a built-in process or token shards)."""

    probed = True

    def __init__(self, config: RunConfig, source: ProcessSource, device: torch.device, dist: Dist = SINGLE) -> None:
        self.config, self.source, self.device, self.dist = config, source, device, dist
        self.batch_size, self.seq_len = config.data.batch_size, config.data.seq_len
        # global micro-batches per epoch: of --batch-size rows on each of `dist.world` processes
        self.per_epoch = source.sequences_per_epoch // (self.batch_size * dist.world)
        self.cursor = BatchCursor()
        self.batches = train_batches(
            source, self.batch_size, self.cursor, dist.rank, dist.world
        )  # reads the cursor lazily
        self.ddp: Any = None
        self.sharded = dist.active and config.train.parallel == "fsdp"
        self.meta = {
            "data_source": source.description,
            # token shards name their tokenizer; `tfkit generate` and `train sft --init` read it here
            "tokenizer_path": getattr(source, "tokenizer_path", None),
            "tokenizer_sha256": getattr(source, "tokenizer_sha256", None),
        }
        # the last micro-batch, for the per-position relative-loss columns
        self.window_np: Any = None
        self.per_token = self.targets = torch.empty(0)

    def build(self, device: torch.device, compiled: bool) -> torch.nn.Module:
        self.model = GPT(self.config.model).to(device)
        step_model: torch.nn.Module = self.model
        if self.sharded:  # every rank holds 1/world of the weights, gradients and optimizer state
            distributed.shard(self.model, list(self.model.transformer.h))
        elif self.dist.active:  # gradients averaged over the ranks; rank 0's initial weights broadcast
            from torch.nn.parallel import DistributedDataParallel

            ids = [device.index] if device.type == "cuda" else None
            # the only buffers (rotary tables) are functions of the config: nothing to broadcast, so a
            # forward on rank 0 alone (evaluation) issues no collective the other ranks would miss
            step_model = self.ddp = DistributedDataParallel(self.model, device_ids=ids, broadcast_buffers=False)
        self.step_model = torch.compile(step_model) if compiled else step_model
        return self.model

    @contextlib.contextmanager
    def accumulating(self) -> Iterator[None]:
        if self.ddp is not None:
            with self.ddp.no_sync():
                yield
        elif self.sharded:
            self.model.set_requires_gradient_sync(False)  # type: ignore[operator]
            try:
                yield
            finally:
                self.model.set_requires_gradient_sync(True)  # type: ignore[operator]
        else:
            yield

    def horizon(self) -> int | None:
        steps_per_epoch = max(1, self.per_epoch // self.config.optim.grad_accum_steps)
        return total_steps(self.config, steps_per_epoch, self.dist.world)

    def next_batch(self) -> torch.Tensor:
        self.window_np = next(self.batches)  # (B, T+1)
        window = torch.from_numpy(self.window_np)
        if self.device.type == "cuda":
            return window.pin_memory().to(self.device, non_blocking=True)
        return window.to(self.device)

    def loss(self, batch: torch.Tensor) -> tuple[torch.Tensor, None]:
        inputs, self.targets = batch[:, :-1], batch[:, 1:]
        with autocast(self.device, self.config.train.precision):
            logits = self.step_model(inputs)  # (B, T, V)
        self.per_token = F.cross_entropy(logits.float().flatten(0, 1), self.targets.flatten(), reduction="none")
        loss = self.per_token.mean()
        if self.config.train.z_loss > 0:
            loss = loss + self.config.train.z_loss * z_loss(logits)
        return loss, None

    def probe(self, batch: torch.Tensor) -> torch.Tensor:
        with autocast(self.device, self.config.train.precision):
            logits = self.model(batch[:, :-1])  # (B, T, V)
        self._reshard()
        return logits

    def _reshard(self) -> None:
        """After a forward without backward, FSDP keeps the root's gathered weights; drop them.

        Otherwise the next training forward would reuse them after the optimizer changed the shards.
        """
        if self.sharded:
            self.model.reshard()  # type: ignore[operator]

    def batch_tokens(self, batch: torch.Tensor) -> int:
        return self.batch_size * self.seq_len * self.dist.world  # the global micro-batch

    def shape(self) -> tuple[int, int]:
        return self.batch_size * self.config.optim.grad_accum_steps * self.dist.world, self.seq_len

    def epoch(self) -> float:
        return self.cursor.epoch + self.cursor.batch / self.per_epoch

    def columns(self) -> tuple[list[str], list[str]]:
        return pretrain_columns(self.seq_len, self.source.has_optimum)

    def evaluate(self) -> dict[str, Any]:
        # under DDP rank 0 evaluates alone: through the model itself, not the wrapper
        model = self.model if self.ddp is not None else self.step_model
        metrics = evaluate(model, self.source, self.device, self.config.train.precision, self.batch_size)
        self._reshard()
        return metrics

    def train_fields(self) -> dict[str, Any]:
        """Per-position relative loss on the last micro-batch of the logged step (synthetic processes only)."""
        if not self.source.has_optimum or self.window_np is None:
            return {}
        model_pos = self.per_token.detach().view_as(self.targets).float().mean(0).cpu().numpy()
        optimal_pos = self.source.optimal_losses(self.window_np).mean(0)
        return {
            f"relative_loss_{i + 1}": float(model_pos[i] / optimal_pos[i]) if optimal_pos[i] > 0 else math.nan
            for i in range(self.seq_len)
        }

    def state_dict(self) -> dict[str, Any]:
        return {"data_cursor": {"epoch": self.cursor.epoch, "batch": self.cursor.batch}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.cursor.epoch, self.cursor.batch = state["data_cursor"]["epoch"], state["data_cursor"]["batch"]


def train(
    config: RunConfig,
    **run: Unpack[RunArgs],
) -> RunResult:
    """Train one model as `config` says and write its run directory.

    Returns a `RunResult` whose status is `completed`, `interrupted` (Ctrl-C or SIGTERM:
    stopped at a step boundary with a checkpoint) or `failed` (too many non-finite steps
    in a row, a loss spike the `--spike-action` stops on). Raises `TfkitError` for bad input
    before anything is written. `resume` continues from a checkpoint (`tfkit.training.fit`).
    With `log.s3_uri` the run directory is pushed to `<s3_uri>/<run name>/` at the end
    (described in `RunResult.pushed`); a push that fails then raises `StorageError`, the
    run saved on disk.
    """
    if distributed.from_env().active and config.log.out is None:
        raise ConfigError("--out is required under torchrun: every process must name the same run directory")
    dist = distributed.init(config.train.device)
    try:
        device = distributed.rank_device(resolve_device(config.train.device), dist)
        source = open_source(config.data, config.train.seed)
        config = resolve_config(config, source)
        return fit(
            PretrainTask(config, source, device, dist),
            config,
            device,
            **run,
        )
    finally:
        distributed.shutdown(dist)
