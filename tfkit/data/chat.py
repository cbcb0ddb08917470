"""SFT and DPO batches from token-id datasets (`tfkit tokenizer tokenize --mode sft|dpo`).

Examples are read once into flat id and mask arrays with offsets (like token shards).
A training window is `seq_len + 1` tokens: inputs `[:-1]`, targets `[1:]`; a target is
scored when its loss mask is true (the response and its closing `<|end|>`). Longer
examples are cut at `seq_len + 1` tokens; shorter ones are padded with id 0 and an
unscored target, at the end, where causal attention keeps real tokens from seeing them.

- `SftData`: one example per row, or with `packing` several examples per row, placed
  greedily in this epoch's order. A packed batch carries each token's position within
  its example and its example index in the row (`doc`); the trainer turns `doc` into an
  attention mask so an example sees only itself, and a target is scored only when it
  belongs to the same example as its input.
- `DpoData`: chosen and rejected sequences of each pair, padded to one length.

Epoch `e` visits the examples in an order drawn from `(seed, e)`; validation uses the
first `val_examples` of the validation (or test) split, in order.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tfkit.data.splits import load_saved_splits
from tfkit.data.tokenized import TOKENIZED_MANIFEST, parse_tokenized_manifest
from tfkit.errors import DataError

PAD_ID = 0
SFT_COLUMNS = ("input_ids", "loss_mask")
DPO_COLUMNS = ("chosen_input_ids", "chosen_loss_mask", "rejected_input_ids", "rejected_loss_mask")


@dataclass
class Ragged:
    """Variable-length rows as flat `values` and `offsets` (row i is values[offsets[i]:offsets[i+1]])."""

    values: np.ndarray
    offsets: np.ndarray

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def row(self, i: int) -> np.ndarray:
        return self.values[self.offsets[i] : self.offsets[i + 1]]

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def head(self, n: int) -> Ragged:
        return Ragged(self.values[: self.offsets[n]], self.offsets[: n + 1])


@dataclass
class ChatDataset:
    """A tokenized SFT or DPO folder: its splits' columns and what its manifest says."""

    path: Path
    mode: str
    train: dict[str, Ragged]
    val: dict[str, Ragged]
    val_split: str
    vocab_size: int
    tokenizer_path: str | None
    tokenizer_sha256: str | None


def _ragged(dataset: Any, column: str) -> Ragged:
    import pyarrow as pa

    array = dataset.with_format("arrow")[:].column(column).combine_chunks()
    if isinstance(array, pa.ChunkedArray):  # an empty table stays chunked
        array = pa.concat_arrays(array.chunks) if array.num_chunks else pa.array([], type=array.type)
    offsets = array.offsets.to_numpy().astype(np.int64)
    values = array.values.to_numpy(zero_copy_only=False)
    values = values.astype(bool) if values.dtype == bool else values.astype(np.int64)
    return Ragged(values[offsets[0] : offsets[-1]], offsets - offsets[0])


def open_chat_dataset(path: str | Path, mode: str) -> ChatDataset:
    """Open a folder tokenized with `--mode sft` or `--mode dpo`, or say clearly what it holds instead."""
    path = Path(path)
    command = f"`tfkit train {mode}`"
    if not path.is_dir():
        raise DataError(f"--data {path}: no such folder")
    manifest: dict[str, Any] = {}
    if (path / TOKENIZED_MANIFEST).is_file():
        manifest = parse_tokenized_manifest(path / TOKENIZED_MANIFEST)
    found = manifest.get("mode") or ("pretrain" if any(path.glob("*.bin")) else None)
    if found is not None and found != mode:
        what = "pretraining token shards" if found == "pretrain" else f"{found.upper()} data"
        raise DataError(f"--data {path} holds {what}; {command} needs data tokenized with --mode {mode}")
    not_saved = f"--data {path} is not a tokenized dataset (run `tfkit tokenizer tokenize --mode {mode}`)"
    splits = load_saved_splits(path, not_saved)
    if "train" not in splits:
        raise DataError(f"--data {path} has no train split")
    val_split = next((s for s in ("validation", "test") if s in splits), None)
    if val_split is None:
        raise DataError(f"--data {path} has no validation split; download with --val-fraction > 0 and tokenize again")
    needed = SFT_COLUMNS if mode == "sft" else DPO_COLUMNS
    for split in ("train", val_split):
        missing = [c for c in needed if c not in splits[split].column_names]
        if missing:
            raise DataError(
                f"--data {path} is not {mode.upper()} data: its {split} split has no {', '.join(missing)} "
                f"column{'s' if len(missing) > 1 else ''} (tokenize with --mode {mode})"
            )
    train = {c: _ragged(splits["train"], c) for c in needed}
    val = {c: _ragged(splits[val_split], c) for c in needed}
    if not len(train[needed[0]]):
        raise DataError(f"the train split of {path} is empty")
    if not len(val[needed[0]]):
        raise DataError(f"the {val_split} split of {path} is empty")
    ids = [c for c in needed if c.endswith("input_ids")]
    biggest = max(int(r.values.max(initial=0)) for part in (train, val) for c, r in part.items() if c in ids)
    vocab_size = int(manifest.get("vocab_size") or biggest + 1)
    if biggest >= vocab_size:
        raise DataError(f"--data {path} holds token id {biggest}, outside its vocabulary of {vocab_size}")
    return ChatDataset(
        path, mode, train, val, val_split, vocab_size, manifest.get("tokenizer_path"), manifest.get("tokenizer_sha256")
    )


def longest(*parts: Ragged) -> int:
    return max(int(p.lengths.max(initial=0)) for p in parts)


def _window(ids: np.ndarray, mask: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Ids and mask of one example in a row of `width` tokens: cut or padded at the end."""
    out_ids = np.full(width, PAD_ID, dtype=np.int64)
    out_mask = np.zeros(width, dtype=bool)
    n = min(len(ids), width)
    out_ids[:n], out_mask[:n] = ids[:n], mask[:n]
    return out_ids, out_mask


def scored_after_cut(ids: Ragged, mask: Ragged, seq_len: int) -> tuple[int, int]:
    """(examples cut by a window of seq_len + 1 tokens, response targets that remain scored)."""
    lengths = ids.lengths
    cut = int((lengths > seq_len + 1).sum())
    scored = sum(int(mask.row(i)[1 : seq_len + 1].sum()) for i in range(len(mask)))
    return cut, scored


class SftData:
    """SFT batches: dicts of numpy arrays `tokens` (B, T+1), `mask` (B, T+1) and, packed, `positions`, `doc`."""

    def __init__(
        self, dataset: ChatDataset, seq_len: int, batch_size: int, seed: int, packing: bool, val_examples: int
    ) -> None:
        self.dataset = dataset
        self.seq_len = seq_len
        self.batch_size = batch_size
        self.seed = seed
        self.packing = packing
        self.ids, self.mask = dataset.train["input_ids"], dataset.train["loss_mask"]
        n_val = min(val_examples, len(dataset.val["input_ids"]))
        self.val_ids, self.val_mask = dataset.val["input_ids"].head(n_val), dataset.val["loss_mask"].head(n_val)
        self._epoch_cache: tuple[int, list[list[int]]] | None = None
        if self.batches_in_epoch(0) == 0:
            unit = "packed rows" if packing else "examples"
            raise DataError(
                f"--batch-size {batch_size} is larger than one epoch ({len(self.rows(0))} {unit} in {dataset.path})"
            )

    def rows(self, epoch: int) -> list[list[int]]:
        """The examples of each row of an epoch, in this epoch's order."""
        if self._epoch_cache is not None and self._epoch_cache[0] == epoch:
            return self._epoch_cache[1]
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.ids))
        if not self.packing:
            rows = [[int(i)] for i in order]
        else:
            width = self.seq_len + 1
            lengths = np.minimum(self.ids.lengths, width)
            rows, current, used = [], [], 0
            for i in order:
                if current and used + lengths[i] > width:
                    rows.append(current)
                    current, used = [], 0
                current.append(int(i))
                used += int(lengths[i])
            if current:
                rows.append(current)
        self._epoch_cache = (epoch, rows)
        return rows

    def batches_in_epoch(self, epoch: int) -> int:
        return len(self.rows(epoch)) // self.batch_size

    def tokens_per_epoch(self) -> int:
        return int(np.minimum(self.ids.lengths, self.seq_len + 1).sum())

    def batch(self, epoch: int, index: int) -> dict[str, np.ndarray]:
        rows = self.rows(epoch)[index * self.batch_size : (index + 1) * self.batch_size]
        if self.packing:
            return self._packed(rows)
        return self._padded(self.ids, self.mask, [r[0] for r in rows])

    def _padded(self, ids: Ragged, mask: Ragged, examples: list[int]) -> dict[str, np.ndarray]:
        width = self.seq_len + 1
        tokens = np.full((len(examples), width), PAD_ID, dtype=np.int64)
        scored = np.zeros((len(examples), width), dtype=bool)
        lengths = np.zeros(len(examples), dtype=np.int64)
        for r, i in enumerate(examples):
            tokens[r], scored[r] = _window(ids.row(i), mask.row(i), width)
            lengths[r] = min(len(ids.row(i)), width)
        return {"tokens": tokens, "mask": scored, "lengths": lengths}

    def _packed(self, rows: list[list[int]]) -> dict[str, np.ndarray]:
        width = self.seq_len + 1
        tokens = np.full((len(rows), width), PAD_ID, dtype=np.int64)
        scored = np.zeros((len(rows), width), dtype=bool)
        positions = np.zeros((len(rows), width), dtype=np.int64)
        doc = np.full((len(rows), width), -1, dtype=np.int64)  # padding: its own "example"
        lengths = np.zeros(len(rows), dtype=np.int64)
        for r, examples in enumerate(rows):
            at = 0
            for d, i in enumerate(examples):
                ids, mask = self.ids.row(i), self.mask.row(i)
                n = min(len(ids), width - at)
                tokens[r, at : at + n], scored[r, at : at + n] = ids[:n], mask[:n]
                positions[r, at : at + n] = np.arange(n)
                doc[r, at : at + n] = d
                at += n
            lengths[r] = at
            positions[r, at:] = np.arange(width - at)
        return {"tokens": tokens, "mask": scored, "positions": positions, "doc": doc, "lengths": lengths}

    def train_batches(self, cursor: Any) -> Iterator[dict[str, np.ndarray]]:
        """Endless micro-batches, advancing `cursor` (epoch, batch); an epoch's partial batch is dropped."""
        while True:
            while cursor.batch < self.batches_in_epoch(cursor.epoch):
                index = cursor.batch
                cursor.batch += 1
                yield self.batch(cursor.epoch, index)
            cursor.epoch += 1
            cursor.batch = 0

    def val_batches(self) -> Iterator[dict[str, np.ndarray]]:
        """The validation examples, one per row, unpacked."""
        n = len(self.val_ids)
        for start in range(0, n, self.batch_size):
            yield self._padded(self.val_ids, self.val_mask, list(range(start, min(start + self.batch_size, n))))


class DpoData:
    """DPO batches: `tokens` (2B, T+1) and `mask` (2B, T+1), chosen rows first, and the pairs' `index`."""

    def __init__(self, dataset: ChatDataset, seq_len: int, batch_size: int, seed: int, val_examples: int) -> None:
        self.dataset = dataset
        self.seq_len = seq_len
        self.batch_size = batch_size
        self.seed = seed
        self.train = dataset.train
        n_val = min(val_examples, len(dataset.val["chosen_input_ids"]))
        self.val = {c: r.head(n_val) for c, r in dataset.val.items()}
        self.num_pairs = len(self.train["chosen_input_ids"])
        self._epoch_cache: tuple[int, np.ndarray] | None = None
        if self.batches_in_epoch(0) == 0:
            raise DataError(f"--batch-size {batch_size} is larger than one epoch ({self.num_pairs} pairs)")

    def batches_in_epoch(self, epoch: int) -> int:
        return self.num_pairs // self.batch_size

    def _order(self, epoch: int) -> np.ndarray:
        if self._epoch_cache is None or self._epoch_cache[0] != epoch:
            self._epoch_cache = (epoch, np.random.default_rng([self.seed, epoch]).permutation(self.num_pairs))
        return self._epoch_cache[1]

    def pairs(self, part: dict[str, Ragged], indices: np.ndarray) -> dict[str, np.ndarray]:
        width = self.seq_len + 1
        B = len(indices)
        tokens = np.full((2 * B, width), PAD_ID, dtype=np.int64)
        mask = np.zeros((2 * B, width), dtype=bool)
        lengths = np.zeros(2 * B, dtype=np.int64)
        for side, offset in (("chosen", 0), ("rejected", B)):
            ids, masks = part[f"{side}_input_ids"], part[f"{side}_loss_mask"]
            for r, i in enumerate(indices):
                tokens[offset + r], mask[offset + r] = _window(ids.row(int(i)), masks.row(int(i)), width)
                lengths[offset + r] = min(len(ids.row(int(i))), width)
        return {"tokens": tokens, "mask": mask, "lengths": lengths, "index": np.asarray(indices, dtype=np.int64)}

    def train_batches(self, cursor: Any) -> Iterator[dict[str, np.ndarray]]:
        per_epoch = self.batches_in_epoch(0)
        while True:
            order = self._order(cursor.epoch)
            while cursor.batch < per_epoch:
                start = cursor.batch * self.batch_size
                cursor.batch += 1
                yield self.pairs(self.train, order[start : start + self.batch_size])
            cursor.epoch += 1
            cursor.batch = 0

    def ordered_batches(self, part: dict[str, Ragged]) -> Iterator[dict[str, np.ndarray]]:
        """Every pair of `part` (the train or validation columns), in order."""
        n = len(part["chosen_input_ids"])
        for start in range(0, n, self.batch_size):
            yield self.pairs(part, np.arange(start, min(start + self.batch_size, n)))
