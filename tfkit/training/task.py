"""The `Task` protocol: what differs between the kinds of training that `fit` runs.

A task is one kind of training (pretraining, ICL, SFT, DPO): its model, its batches with a
resumable position in the data, its loss and metrics, its evaluation and its state.
`Resumed` is a checkpoint that `--resume` named, resolved and loaded once.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tfkit.training.distributed import SINGLE, Dist


class Task(ABC):
    """One kind of training: its model, batches, loss, evaluation and state; `fit` runs the rest.

    `fit` calls `build` once the run directory is ready and every RNG is seeded, then,
    per optimizer step, `begin_step`, and per micro-batch `next_batch`, `loss` and
    `batch_tokens`. The task keeps its position in the data itself and hands it over
    as `state_dict` for checkpoints.
    """

    #: names of the metric vector `loss` returns, logged after train_loss (averaged between rows)
    metric_names: tuple[str, ...] = ()
    #: what `batch_tokens` counts, the count column of its rows: tokens_seen or points_seen
    count_column: str = "tokens_seen"
    #: what train_config.json records about the data (`data_source` first)
    meta: dict[str, Any]
    #: `probe` runs the model's attention layers (the monitor records their logits)
    probed: bool = False
    #: the processes this task trains on (`tfkit.training.distributed`); one unless the task shards its data
    dist: Dist = SINGLE
    #: the model's parameters are sharded over the processes (FSDP): forwards and checkpoints are collective
    sharded: bool = False
    #: `probe` returns logits over a vocabulary (their statistics are logged too)
    output_logits: bool = True

    @abstractmethod
    def build(self, device: torch.device, compiled: bool) -> torch.nn.Module:
        """The model to train, on `device` (compiled for the steps when `compiled`)."""

    @abstractmethod
    def horizon(self) -> int | None:
        """The step horizon of the schedule implied by the stop criteria (None: time only)."""

    def begin_step(self, step: int) -> None:  # noqa: B027  (optional hook)
        """Called before the micro-batches of optimizer step `step` (0-based)."""

    @abstractmethod
    def next_batch(self) -> Any:
        """The next micro-batch, advancing the task's position in the data."""

    @abstractmethod
    def loss(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(mean loss with a graph, detached metric vector or None) of one micro-batch."""

    @abstractmethod
    def batch_tokens(self, batch: Any) -> int:
        """The tokens (or in-context examples) a micro-batch trains on: what the count column counts."""

    @abstractmethod
    def shape(self) -> tuple[int, int]:
        """(rows per optimizer step, sequence length), for the train row."""

    @abstractmethod
    def evaluate(self) -> dict[str, Any]:
        """The validation metrics (`val_loss` first), logged as one val_log.csv row."""

    @abstractmethod
    def columns(self) -> tuple[list[str], list[str]]:
        """The columns of `train_log.csv` and `val_log.csv`, as `tfkit.training.columns` declares them."""

    def accumulating(self) -> contextlib.AbstractContextManager:
        """Around the backward of a micro-batch that is not its step's last (DDP: no gradient sync)."""
        return contextlib.nullcontext()

    def probe(self, batch: Any) -> torch.Tensor | None:
        """Forward `batch` through the uncompiled model (the monitor's forward, in eval mode, without gradients).

        Returns the output logits (B, T, V) when `output_logits`, else None.
        """
        raise NotImplementedError

    def epoch(self) -> float | None:
        """Epochs of the training data done (None: the data has no epochs)."""
        return None

    def train_fields(self) -> dict[str, Any]:
        """Extra train-row columns after the counters, read at logging points."""
        return {}

    def stage_fields(self) -> dict[str, Any]:
        """Columns describing the current stage (a curriculum), in every row and the summary."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """The task's position in its data (cursor, generator), for checkpoints."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:  # noqa: B027  (optional hook)
        """Continue from a `state_dict`."""

    def checkpoint_extra(self) -> dict[str, Any]:
        """Entries every checkpoint carries for later readers (the tokenizer record)."""
        return {}


@dataclass
class Resumed:
    """A checkpoint `--resume` named, resolved and loaded once (`resolve_resume`); `fit` continues from it."""

    checkpoint: Path
    state: dict[str, Any]
    skipped: list[str]  # one line for each checkpoint passed over (corrupt, unreadable), recorded with the resume
