"""Train a byte-level BPE tokenizer (HF `tokenizers`) on the train split of a dataset.

The text is streamed to the trainer in batches read from the memory-mapped dataset, so
the corpus never has to fit in memory. Special tokens come from a profile:

* `pretrain`: `<|endoftext|>`, which separates documents in token shards;
* `chat`: also `<|system|>`, `<|user|>`, `<|assistant|>` and `<|end|>` (end of a turn),
  which the SFT and DPO chat template uses.

The result is one `tokenizer.json` that `tokenizers.Tokenizer.from_file` loads.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tfkit.data.kinds import text_columns
from tfkit.data.sources import load_raw
from tfkit.errors import DataError
from tfkit.io import write_atomic

EOT = "<|endoftext|>"
SYSTEM, USER, ASSISTANT, END = "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"
PROFILES: dict[str, tuple[str, ...]] = {
    "pretrain": (EOT,),
    "chat": (EOT, SYSTEM, USER, ASSISTANT, END),
}
NUM_BYTES = 256
# the BPE trainer reserves memory for every id asked for up front: 2**24 ids is far beyond any
# vocabulary a corpus gives, while 10**11 aborts the process
MAX_VOCAB_SIZE = 1 << 24


class CorpusProgress:
    """CorpusProgress hooks for reading a corpus; both are optional."""

    def start(self, split: str, documents: int, nbytes: int) -> None: ...

    def advance(self, documents: int, nbytes: int) -> None: ...


@dataclass
class TokenizerTrainResult:
    """What `train_tokenizer` produced."""

    output_path: Path
    vocab_size: int
    profile: str
    special_tokens: tuple[str, ...]
    num_documents: int
    corpus_bytes: int
    seconds: float
    sha256: str
    requested_vocab_size: int = 0  # the --vocab-size asked for; `vocab_size` is what the corpus gave
    warnings: list[str] = field(default_factory=list)

    @property
    def mb_per_s(self) -> float:
        return self.corpus_bytes / 1e6 / max(self.seconds, 1e-9)


def tokenizer_sha256(path: str | Path) -> str:
    """SHA-256 of a tokenizer file: what token shards record to name their tokenizer."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def load_tokenizer(path: str | Path) -> Any:
    """A `tokenizers.Tokenizer` from a tokenizer.json, or a `DataError` saying why not."""
    from tokenizers import Tokenizer

    path = Path(path)
    if not path.is_file():
        raise DataError(f"tokenizer not found: {path}")
    try:
        return Tokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises a bare Exception for unreadable files
        raise DataError(
            f"{path} is not a tokenizer.json: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
        ) from None


def special_token_id(tokenizer: Any, token: str, why: str) -> int:
    """The id of a special token, or a `DataError` naming what needs it."""
    token_id = tokenizer.token_to_id(token)
    if token_id is None:
        raise DataError(f"the tokenizer has no {token} token, which {why}")
    return int(token_id)


def text_batches(dataset: Any, columns: tuple[str, ...], batch_size: int) -> Iterator[tuple[list[str], int, int]]:
    """(non-empty texts of the given columns, their utf-8 bytes, rows) per batch of rows, read from Arrow."""
    import pyarrow.compute as pc

    table = dataset.with_format("arrow")
    for start in range(0, len(dataset), batch_size):
        batch = table[start : start + batch_size]
        texts: list[str] = []
        nbytes = 0
        for col in columns:
            column = batch.column(col)
            nbytes += pc.sum(pc.binary_length(column)).as_py() or 0
            texts += [t for t in column.to_pylist() if t]
        yield texts, nbytes, batch.num_rows


def train_tokenizer(
    dataset_dir: str | Path,
    output_path: str | Path,
    *,
    vocab_size: int = 8192,
    min_frequency: int = 2,
    profile: str = "pretrain",
    split: str = "train",
    batch_size: int = 1000,
    overwrite: bool = False,
    progress: CorpusProgress | None = None,
) -> TokenizerTrainResult:
    """Train a byte-level BPE on one split of a dataset saved by `tfkit data download`.

    Args:
        vocab_size: target vocabulary size, including the 256 byte tokens and the special tokens.
        min_frequency: a pair must occur this often to be merged.
        profile: `pretrain` or `chat` special tokens.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if profile not in PROFILES:
        raise DataError(f"--profile must be one of {', '.join(PROFILES)}, got {profile!r}")
    specials = PROFILES[profile]
    if vocab_size < NUM_BYTES + len(specials):
        raise DataError(f"--vocab-size must be at least {NUM_BYTES + len(specials)} (256 bytes + special tokens)")
    if vocab_size > MAX_VOCAB_SIZE:
        raise DataError(f"--vocab-size must be at most {MAX_VOCAB_SIZE:,}, got {vocab_size:,}")
    if min_frequency < 1:
        raise DataError(f"--min-frequency must be at least 1, got {min_frequency}")
    if batch_size < 1:
        raise DataError(f"--batch-size must be at least 1, got {batch_size}")
    output_path = Path(output_path)
    if output_path.is_dir():
        raise DataError(f"--output-path {output_path} is a folder; give a file name such as tokenizer.json")
    if output_path.exists() and not overwrite:
        raise DataError(f"{output_path} already exists; pass --overwrite to replace it")
    raw = load_raw(dataset_dir)
    dataset = raw.split(split)
    if len(dataset) == 0:
        raise DataError(f"the {split!r} split of {dataset_dir} is empty")
    progress = progress or CorpusProgress()
    progress.start(split, len(dataset), 0)
    counts = {"docs": 0, "bytes": 0}
    columns = text_columns(raw.kind)

    def corpus() -> Iterator[list[str]]:
        for texts, nbytes, rows in text_batches(dataset, columns, batch_size):
            counts["docs"] += rows
            counts["bytes"] += nbytes
            yield texts
            progress.advance(rows, nbytes)

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(specials),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    start = time.perf_counter()
    tokenizer.train_from_iterator(corpus(), trainer=trainer, length=len(dataset))
    seconds = time.perf_counter() - start
    if counts["bytes"] == 0:
        raise DataError(f"the {split!r} split of {dataset_dir} holds no text")
    write_atomic(output_path, lambda tmp: tokenizer.save(str(tmp)))
    reached = tokenizer.get_vocab_size(with_added_tokens=True)
    warnings = []
    if reached < vocab_size:
        warnings.append(
            f"the vocabulary reached only {reached:,} of the {vocab_size:,} ids of --vocab-size: the {split!r} split "
            f"({counts['bytes'] / 1e6:,.2f} MB) has no more pairs seen at least --min-frequency {min_frequency} "
            "time(s); more text or a smaller --vocab-size fits"
        )
    return TokenizerTrainResult(
        output_path=output_path,
        vocab_size=reached,
        profile=profile,
        special_tokens=specials,
        num_documents=counts["docs"],
        corpus_bytes=counts["bytes"],
        seconds=seconds,
        sha256=tokenizer_sha256(output_path),
        requested_vocab_size=vocab_size,
        warnings=warnings,
    )
