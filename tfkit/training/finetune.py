"""The training loop of `tfkit train sft` and `tfkit train dpo`: a GPT from `--init`, one objective.

`run_finetune(config, objective, init)` trains the `--init` model on the objective's
batches and writes the same run directory as `tfkit train pretrain`:

    train_config.json  train_log.csv  val_log.csv  checkpoints/<tokens>.pt  summary.json

An `Objective` owns the data and the loss (tfkit.training.sft, tfkit.training.dpo):
it yields host batches, turns one into a loss and a vector of train metrics, and
evaluates. Around it runs the step loop every trainer shares (tfkit.training.session):
AdamW and its schedule, gradient accumulation and clipping, non-finite step skipping,
stop criteria, evaluation and checkpoint cadence, trackers (CSV, wandb), Ctrl-C at a step
boundary, the S3 push. `tokens_seen` counts real (unpadded) tokens.

Checkpoints hold the resolved config (its `model` section is the `--init` model's) and
the tokenizer the data was made with, so a run can be the next `--init` and
`tfkit generate` finds its tokenizer.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import Any

import torch

import tfkit
from tfkit.data.loaders import BatchCursor
from tfkit.models.gpt import GPT
from tfkit.training.checkpoint import checkpoint_path, rng_state, save_checkpoint
from tfkit.training.load import LoadedRun
from tfkit.training.loop import _Progress, resolve_device
from tfkit.training.optim import build_optimizer
from tfkit.training.session import RunResult, RunSession, StepHooks, TrainCallback, compile_enabled, prepare_device


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
    device = resolve_device(config.train.device)
    session = RunSession.open(config, callback=callback, overwrite=overwrite)
    run_dir = session.run_dir

    prepare_device(config.train.seed, device)
    model = init.build(device)
    objective.setup(model, device, config.train.precision)
    use_compile = compile_enabled(config.train, device)
    step_model = torch.compile(model) if use_compile else model
    optimizer = build_optimizer(model, config.optim, device)

    t = config.train
    accum = config.optim.grad_accum_steps
    steps_per_epoch = max(1, objective.batches_in_epoch(0) // accum)
    session.start(
        model,
        device,
        compiled=use_compile,
        horizon=total_steps(config, steps_per_epoch, data_meta.get("tokens_per_epoch", 0)),
        meta={**data_meta, "init_checkpoint": str(init.checkpoint), **tokenizer},
    )

    progress = _Progress()
    cursor = progress.cursor
    batches = objective.train_batches(cursor)
    n_metrics = len(objective.train_metrics)

    def step() -> tuple[torch.Tensor, torch.Tensor]:
        step_loss = torch.zeros((), dtype=torch.float32, device=device)
        step_metrics = torch.zeros(n_metrics, dtype=torch.float32, device=device)
        for _ in range(accum):
            batch = next(batches)
            loss, metrics = objective.step(step_model, batch, device, t.precision)
            (loss / accum).backward()
            step_loss += loss.detach().float() / accum
            step_metrics += metrics.float() / accum
            progress.tokens_seen += objective.tokens(batch)
        return step_loss, step_metrics

    def advance() -> None:
        per_epoch = max(1, objective.batches_in_epoch(cursor.epoch))
        progress.epoch = cursor.epoch + cursor.batch / per_epoch

    def save() -> None:
        state = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "step": progress.step,
            "tokens_seen": progress.tokens_seen,
            "epoch": progress.epoch,
            "data_cursor": {"epoch": cursor.epoch, "batch": cursor.batch},
            "config": config.to_dict(),
            "tokenizer": tokenizer,
            "rng": rng_state(),
            "tfkit_version": tfkit.__version__,
        }
        save_checkpoint(checkpoint_path(run_dir, progress.tokens_seen), state)

    hooks = StepHooks(
        step=step,
        advance=advance,
        shape=lambda: (objective.batch_size * accum, objective.seq_len),
        evaluate=lambda: objective.evaluate(model, device, t.precision),
        save=save,
        metric_names=objective.train_metrics,
    )
    return session.run(progress, optimizer, hooks)


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
