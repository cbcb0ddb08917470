"""`tfkit train sft` and `tfkit train dpo`: a GPT from `--init`, trained on one objective.

`run_finetune(config, objective, init)` trains the `--init` model on the objective's
batches through the one training loop (`tfkit.training.fit`), as a `FinetuneTask`, and
writes the same run directory as `tfkit train pretrain`:

    train_config.json  train_log.csv  val_log.csv  spikes.csv  checkpoints/<tokens>.pt  summary.json

An `Objective` owns the data and the loss (tfkit.training.sft, tfkit.training.dpo):
it yields host batches, turns one into a loss and a vector of train metrics, and
evaluates. `tokens_seen` counts real (unpadded) tokens.

Checkpoints hold the resolved config (its `model` section is the `--init` model's) and
the tokenizer the data was made with, so a run can be the next `--init` and
`tfkit generate` finds its tokenizer.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import Any, Unpack

import torch

from tfkit.data.loaders import BatchCursor
from tfkit.models.gpt import GPT
from tfkit.training.device import autocast, resolve_device
from tfkit.training.fit import fit
from tfkit.training.load import LoadedRun
from tfkit.training.session import RunArgs, RunResult
from tfkit.training.task import Task


class Objective(ABC):
    """Data and loss of one kind of fine-tuning; `tfkit.training.sft` and `.dpo` implement it."""

    #: names of the metric vector `step` returns, logged after train_loss (averaged between log points)
    train_metrics: tuple[str, ...] = ()
    #: the rows of a micro-batch (examples, packed rows, pairs): `global_batch_size` / grad_accum_steps
    batch_size: int = 1
    seq_len: int = 1

    def setup(self, model: GPT, device: torch.device, precision: str) -> None:  # noqa: B027  (optional hook)
        """Called once the model is on its device, before the first step."""

    @abstractmethod
    def batches_in_epoch(self, epoch: int) -> int:
        """Micro-batches in epoch `epoch` (packing makes it depend on the epoch)."""

    @abstractmethod
    def train_batches(self, cursor: BatchCursor) -> Iterator[dict[str, Any]]:
        """Endless host micro-batches, advancing `cursor`."""

    @abstractmethod
    def step(
        self, model: torch.nn.Module, batch: dict[str, Any], device: torch.device, precision: str
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss with a graph, detached metric vector of len(train_metrics)) of one micro-batch."""

    def tokens(self, batch: dict[str, Any]) -> int:
        return int(batch["lengths"].sum())

    def probe(
        self, model: torch.nn.Module, batch: dict[str, Any], device: torch.device, precision: str
    ) -> torch.Tensor:
        """The output logits (B, T, V) of the micro-batch's rows (the monitor's forward, without gradients)."""
        tokens = to_device(batch["tokens"], device)
        with autocast(device, precision):
            return model(tokens[:, :-1])

    @abstractmethod
    def evaluate(self, model: GPT, device: torch.device, precision: str) -> dict[str, Any]:
        """The validation metrics (`val_loss` first), logged as one val_log.csv row."""

    @abstractmethod
    def columns(self) -> tuple[list[str], list[str]]:
        """The columns of `train_log.csv` and `val_log.csv` (`tfkit.training.columns`)."""


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


class FinetuneTask(Task):
    """An `Objective` on the `--init` model: its batches, loss, metrics and evaluation."""

    probed = True

    def __init__(
        self,
        config: Any,
        objective: Objective,
        init: LoadedRun,
        data_meta: dict[str, Any],
        tokenizer: dict[str, Any],
        device: torch.device,
    ) -> None:
        self.config, self.objective, self.init, self.device = config, objective, init, device
        self.tokenizer = tokenizer
        self.data_meta = data_meta
        self.meta = {**data_meta, "init_checkpoint": str(init.checkpoint), **tokenizer}
        self.metric_names = objective.train_metrics
        self.cursor = BatchCursor()
        self.batches = objective.train_batches(self.cursor)  # reads the cursor lazily

    def build(self, device: torch.device, compiled: bool) -> torch.nn.Module:
        self.model = self.init.build(device)
        self.objective.setup(self.model, device, self.config.train.precision)
        self.step_model = torch.compile(self.model) if compiled else self.model
        return self.model

    def horizon(self) -> int | None:
        steps_per_epoch = max(1, self.objective.batches_in_epoch(0) // self.config.optim.grad_accum_steps)
        return total_steps(self.config, steps_per_epoch, self.data_meta.get("tokens_per_epoch", 0))

    def next_batch(self) -> dict[str, Any]:
        return next(self.batches)

    def loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.objective.step(self.step_model, batch, self.device, self.config.train.precision)

    def probe(self, batch: dict[str, Any]) -> torch.Tensor:
        return self.objective.probe(self.model, batch, self.device, self.config.train.precision)

    def batch_tokens(self, batch: dict[str, Any]) -> int:
        return self.objective.tokens(batch)

    def shape(self) -> tuple[int, int]:
        return self.objective.batch_size * self.config.optim.grad_accum_steps, self.objective.seq_len

    def epoch(self) -> float:
        per_epoch = max(1, self.objective.batches_in_epoch(self.cursor.epoch))
        return self.cursor.epoch + self.cursor.batch / per_epoch

    def columns(self) -> tuple[list[str], list[str]]:
        return self.objective.columns()

    def evaluate(self) -> dict[str, Any]:
        return self.objective.evaluate(self.model, self.device, self.config.train.precision)

    def state_dict(self) -> dict[str, Any]:
        return {"data_cursor": {"epoch": self.cursor.epoch, "batch": self.cursor.batch}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.cursor.epoch, self.cursor.batch = state["data_cursor"]["epoch"], state["data_cursor"]["batch"]

    def checkpoint_extra(self) -> dict[str, Any]:
        return {"tokenizer": self.tokenizer}


def run_finetune(
    config: Any,
    objective: Objective,
    init: LoadedRun,
    *,
    data_meta: dict[str, Any],
    tokenizer: dict[str, Any],
    **run: Unpack[RunArgs],
) -> RunResult:
    """Train the `--init` model on `objective` as the resolved `config` says; write the run directory.

    Args:
        data_meta: what to record about the data in `train_config.json` (`data_source` first).
        tokenizer: `tokenizer_path` and `tokenizer_sha256` of the data, saved with the run.
        run: progress callback, overwrite and resume, as `fit` takes them.
    """
    device = resolve_device(config.train.device)
    task = FinetuneTask(config, objective, init, data_meta, tokenizer, device)
    return fit(task, config, device, **run)


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
