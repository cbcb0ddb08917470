"""Training and validation batches for the trainer, from any data source.

A source yields numpy token windows of shape (B, seq_len + 1): inputs are `[:, :-1]`,
targets `[:, 1:]`. Sources with a known optimum (built-in processes) also give the
Bayes-optimal loss of every target token, so a model is scored against the optimum on
the very same tokens.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from tfkit.config import DataConfig
from tfkit.errors import DataError


class ProcessSource:
    """Sequences sampled from a built-in hidden Markov process.

    One epoch is `train_sequences` sequences. With `resample_each_epoch` every epoch is
    freshly drawn (an endless stream); otherwise epoch 0's set is reshuffled. Epoch `e`
    is generated from `(seed, e)`, so any point of training can be reproduced from
    `(epoch, batch index)` alone.
    """

    has_optimum = True

    def __init__(self, config: DataConfig, seed: int) -> None:
        from tfkit.data.processes import get_process

        self.config = config
        self.process = get_process(config.data, config.process_params)
        self.seed = seed
        self.vocab_size = self.process.vocab_size
        self.seq_len = config.seq_len
        self.sequences_per_epoch = config.train_sequences
        self._epoch_cache: tuple[int, np.ndarray] | None = None
        rng = np.random.default_rng(config.val_seed)
        self.val_tokens = self.process.sample(config.val_sequences, config.seq_len + 1, rng)  # (Nv, T+1)
        # optimal loss of target token i (i = 1..T) given tokens 0..i-1
        self.val_optimal = self.process.token_losses(self.val_tokens)[:, 1:]  # (Nv, T)

    @property
    def description(self) -> str:
        params = ", ".join(f"{k}={v:g}" for k, v in self.process.params.items())
        return f"{self.process.name}({params})"

    def epoch_tokens(self, epoch: int) -> np.ndarray:
        """All sequences of one epoch, (train_sequences, seq_len + 1)."""
        if self._epoch_cache is not None and self._epoch_cache[0] == epoch:
            return self._epoch_cache[1]
        if self.config.resample_each_epoch or epoch == 0:
            rng = np.random.default_rng([self.seed, epoch])
            tokens = self.process.sample(self.sequences_per_epoch, self.seq_len + 1, rng)
        else:
            base = self.epoch_tokens(0)
            tokens = base[np.random.default_rng([self.seed, epoch]).permutation(len(base))]
        self._epoch_cache = (epoch, tokens)
        return tokens

    def optimal_losses(self, windows: np.ndarray) -> np.ndarray:
        """Bayes-optimal loss of each target token of `windows` (B, T+1) -> (B, T)."""
        return self.process.token_losses(windows)[:, 1:]


def open_source(config: DataConfig, seed: int) -> ProcessSource:
    """The data source named by `--data`."""
    from tfkit.data.processes import PROCESSES

    if config.data in PROCESSES:
        return ProcessSource(config, seed)
    names = ", ".join(PROCESSES)
    raise DataError(f"unknown dataset {config.data!r}: built-in processes are {names}")


@dataclass
class BatchCursor:
    """Where training is in the data: epoch and the next micro-batch within it."""

    epoch: int = 0
    batch: int = 0


def train_batches(source: ProcessSource, batch_size: int, cursor: BatchCursor) -> Iterator[np.ndarray]:
    """Endless micro-batches (B, T+1), advancing `cursor` as they are taken.

    An epoch's last partial batch is dropped so every batch has the same shape
    (compiled models see one shape).
    """
    per_epoch = source.sequences_per_epoch // batch_size
    if per_epoch == 0:
        raise DataError(
            f"--batch-size {batch_size} is larger than one epoch ({source.sequences_per_epoch} sequences)"
        )
    while True:
        tokens = source.epoch_tokens(cursor.epoch)
        while cursor.batch < per_epoch:
            start = cursor.batch * batch_size
            cursor.batch += 1
            yield tokens[start : start + batch_size]
        cursor.epoch += 1
        cursor.batch = 0
