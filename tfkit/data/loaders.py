"""Training and validation batches for the trainer, from any data source.

A source yields numpy token windows of shape (B, seq_len + 1): inputs are `[:, :-1]`,
targets `[:, 1:]`. Sources with a known optimum (built-in processes) also give the
Bayes-optimal loss of every target token, so a model is scored against the optimum on
the very same tokens. Token shards (`ShardSource`) are read through a memory map.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

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
        self.val_tokens = self.process.sample(config.val_examples, config.seq_len + 1, rng)  # (Nv, T+1)
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


class _EpochWindows:
    """One epoch of shard windows, gathered lazily: `windows[a:b]` is a (b - a, seq_len + 1) int64 array."""

    def __init__(self, tokens: np.ndarray, starts: np.ndarray, seq_len: int) -> None:
        self.tokens = tokens
        self.starts = starts
        self.offsets = np.arange(seq_len + 1)

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, index: slice) -> np.ndarray:
        starts = self.starts[index]
        return self.tokens[starts[:, None] + self.offsets].astype(np.int64)  # (B, T+1)


class ShardSource:
    """Pretraining token shards (`tfkit tokenizer tokenize`), memory-mapped.

    An epoch is one pass over the train shard in windows of `seq_len + 1` tokens that
    overlap by one token (the last target of a window is the first input of the next).
    Epoch `e` shifts the window grid by a random offset and visits the windows in a random
    order, both drawn from `(seed, e)`. Validation uses the first `val_examples`
    consecutive windows of the validation shard, the same for every run.
    """

    has_optimum = False

    def __init__(self, config: DataConfig, seed: int) -> None:
        from tfkit.data.shards import list_splits, read_shard, shard_paths

        self.config = config
        self.directory = Path(config.data)
        self.seed = seed
        self.seq_len = config.seq_len
        splits = list_splits(self.directory)
        if "train" not in splits:
            raise DataError(f"{self.directory} holds no train shard (train.bin); run `tfkit tokenizer tokenize`")
        val_split = next((s for s in ("validation", "test") if s in splits), None)
        if val_split is None:
            raise DataError(
                f"{self.directory} holds no validation shard; download with --val-fraction > 0 and tokenize again"
            )
        # opening a shard checks every id against its vocabulary, before any training step
        self.train = read_shard(shard_paths(self.directory, "train")[0])
        val = read_shard(shard_paths(self.directory, val_split)[0])
        if (
            val.meta["tokenizer_sha256"] != self.train.meta["tokenizer_sha256"]
            or val.vocab_size != self.train.vocab_size
        ):
            raise DataError(f"the train and {val_split} shards of {self.directory} come from different tokenizers")
        self.vocab_size = self.train.vocab_size
        self.tokenizer_sha256 = self.train.meta["tokenizer_sha256"]
        self.tokenizer_path = self.train.meta.get("tokenizer_path")
        seq_len = self.seq_len
        # windows start at offset + k * seq_len with offset < seq_len, and end within the shard
        self.sequences_per_epoch = self.train.num_tokens // seq_len - 1
        if self.sequences_per_epoch < 1:
            raise DataError(
                f"the train shard holds {self.train.num_tokens:,} tokens, too few for --seq-len {seq_len} "
                f"(it needs at least {2 * seq_len:,})"
            )
        num_val = min(config.val_examples, (val.num_tokens - 1) // seq_len)
        if num_val < 1:
            raise DataError(f"the {val_split} shard holds {val.num_tokens:,} tokens, too few for --seq-len {seq_len}")
        starts = np.arange(num_val) * seq_len
        self.val_tokens = _EpochWindows(val.tokens, starts, seq_len)[:]  # (Nv, T+1)
        self._epoch_cache: tuple[int, _EpochWindows] | None = None

    @property
    def description(self) -> str:
        return f"{self.directory} ({self.train.num_tokens:,} train tokens, vocab {self.vocab_size:,})"

    def epoch_tokens(self, epoch: int) -> _EpochWindows:
        """The windows of one epoch, in this epoch's order (gathered when sliced)."""
        if self._epoch_cache is not None and self._epoch_cache[0] == epoch:
            return self._epoch_cache[1]
        rng = np.random.default_rng([self.seed, epoch])
        offset = int(rng.integers(self.seq_len))
        starts = offset + rng.permutation(self.sequences_per_epoch).astype(np.int64) * self.seq_len
        windows = _EpochWindows(self.train.tokens, starts, self.seq_len)
        self._epoch_cache = (epoch, windows)
        return windows


DataSource = ProcessSource | ShardSource


def open_source(config: DataConfig, seed: int) -> DataSource:
    """The data source named by `--data`: a built-in process or a folder of token shards."""
    from tfkit.data.processes import PROCESSES

    if config.data in PROCESSES:
        return ProcessSource(config, seed)
    path = Path(config.data)
    if path.is_dir():
        if not any(path.glob("*.bin")):
            raise DataError(f"{path} holds no token shards (*.bin); make them with `tfkit tokenizer tokenize`")
        return ShardSource(config, seed)
    names = ", ".join(PROCESSES)
    raise DataError(
        f"unknown dataset {config.data!r}: not a folder of token shards, and built-in processes are {names}"
    )


@dataclass
class BatchCursor:
    """Where training is in the data: epoch and the next micro-batch within it."""

    epoch: int = 0
    batch: int = 0


def train_batches(
    source: DataSource, batch_size: int, cursor: BatchCursor, rank: int = 0, world: int = 1
) -> Iterator[np.ndarray]:
    """Endless micro-batches (B, T+1), advancing `cursor` as they are taken.

    An epoch's last partial batch is dropped so every batch has the same shape
    (compiled models see one shape). With several processes (`world` > 1) the cursor
    counts global micro-batches of `batch_size` x `world` rows and rank `rank` takes its
    `batch_size` of them, so the ranks together see what one process with the global
    batch would (token shards are read only where a rank's rows are).
    """
    global_batch = batch_size * world
    per_epoch = source.sequences_per_epoch // global_batch
    if per_epoch == 0:
        what = f"--batch-size {batch_size}" + (f" x {world} processes" if world > 1 else "")
        raise DataError(f"{what} is larger than one epoch ({source.sequences_per_epoch} sequences)")
    while True:
        tokens = source.epoch_tokens(cursor.epoch)
        while cursor.batch < per_epoch:
            start = cursor.batch * global_batch + rank * batch_size
            cursor.batch += 1
            yield tokens[start : start + batch_size]
        cursor.epoch += 1
        cursor.batch = 0
