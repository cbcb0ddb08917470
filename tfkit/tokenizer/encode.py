"""Tokenize a dataset: token shards for pretraining, token-id datasets for SFT and DPO.

`tokenize_dataset(dataset_dir, tokenizer_path, output_dir, mode=...)`:

* `pretrain`: every split of a text dataset becomes one token shard (`tfkit.data.shards`):
  the documents' ids in order, each followed by `<|endoftext|>` (`tfkit.tokenizer.pretrain`).
* `sft`: instruction/input/output records rendered through the chat template

      <|user|>{instruction}\\n\\n{input}<|end|><|assistant|>{output}<|end|><|endoftext|>

  into `input_ids` and a `loss_mask` that is true only on the response: the output's
  tokens and the `<|end|>` that closes it (`tfkit.tokenizer.chat`).
* `dpo`: prompt/chosen/rejected records as `prompt_input_ids` (the user turn up to
  `<|assistant|>`), and `chosen_input_ids` / `rejected_input_ids` (prompt + response +
  `<|end|>`) with their loss masks (true on the response).

`num_proc > 1` splits every split into contiguous ranges encoded by separate processes
and joins their results in order, so the output is identical to `num_proc = 1`:
pretraining shards through worker processes (`python -m tfkit.tokenizer.workers`, each
running the tokenizer with `cpu_count / num_proc` threads and writing a part shard),
SFT and DPO through `datasets.map(num_proc=...)`. With one process, a helper thread
encodes the next batch while the current one is written. Special tokens written
literally in the text are encoded as plain text, never as control tokens.

Everything is written into a temporary folder that replaces `output_dir` only once complete.
That folder names its writer (a `.tfkit-writer` file: pid and host), so the next tokenize
into the same `output_dir` removes the folders of writers that died (kill -9, power loss)
and leaves alone those still being written (`tfkit.tokenizer.output`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tfkit import __version__
from tfkit.data.sources import RawDataset, load_raw
from tfkit.data.tokenized import MODES
from tfkit.errors import DataError
from tfkit.io import write_dir_atomic
from tfkit.tokenizer.chat import tokenize_chat
from tfkit.tokenizer.output import (
    WRITER_FILE,
    SplitStats,
    check_output_dir,
    mark_writer,
    remove_leftovers,
    write_manifest,
)
from tfkit.tokenizer.pretrain import tokenize_pretrain_split
from tfkit.tokenizer.train import EOT, CorpusProgress, load_tokenizer, special_token_id, tokenizer_sha256

MODE_KINDS = {"pretrain": "text", "sft": "instruction", "dpo": "preference"}


@dataclass
class TokenizeResult:
    """What `tokenize_dataset` wrote."""

    output_dir: Path
    mode: str
    vocab_size: int
    num_proc: int
    seconds: float
    splits: dict[str, SplitStats] = field(default_factory=dict)
    removed_leftovers: list[Path] = field(default_factory=list)  # temp folders of interrupted runs

    @property
    def nbytes(self) -> int:
        return sum(s.nbytes for s in self.splits.values())

    @property
    def tokens(self) -> int:
        return sum(s.tokens for s in self.splits.values())

    @property
    def mb_per_s(self) -> float:
        return self.nbytes / 1e6 / max(self.seconds, 1e-9)


def tokenize_dataset(
    dataset_dir: str | Path,
    tokenizer_path: str | Path,
    output_dir: str | Path,
    *,
    mode: str = "pretrain",
    num_proc: int = 1,
    batch_size: int = 1000,
    overwrite: bool = False,
    progress: CorpusProgress | None = None,
) -> TokenizeResult:
    """Tokenize every split of a dataset saved by `tfkit data download`.

    Args:
        mode: `pretrain` (token shards), `sft` or `dpo` (token-id datasets on disk).
        num_proc: processes that encode in parallel; the output does not depend on it.
        batch_size: documents per `encode_batch` call.
    """
    _check_arguments(mode, num_proc, batch_size)
    progress = progress or CorpusProgress()
    tokenizer_path = Path(tokenizer_path).resolve()
    tokenizer = load_tokenizer(tokenizer_path)
    raw = load_raw(dataset_dir)
    if raw.kind != MODE_KINDS[mode]:
        hint = {v: k for k, v in MODE_KINDS.items()}[raw.kind]
        raise DataError(
            f"--mode {mode} needs {MODE_KINDS[mode]} data; {dataset_dir} holds {raw.kind} data (use --mode {hint})"
        )
    output_dir = Path(output_dir)
    check_output_dir(output_dir, overwrite)
    meta = _metadata(raw, tokenizer, tokenizer_path)
    result = TokenizeResult(output_dir, mode, meta["vocab_size"], num_proc, 0.0)

    def write(out: Path) -> None:
        mark_writer(out)
        start = time.perf_counter()
        if mode == "pretrain":
            for split in raw.splits:
                result.splits[split] = tokenize_pretrain_split(
                    raw, split, tokenizer_path, out, meta, num_proc, batch_size, progress
                )
        else:
            result.splits.update(tokenize_chat(raw, mode, tokenizer_path, out, num_proc, batch_size, progress))
        result.seconds = time.perf_counter() - start
        write_manifest(out, mode, meta, num_proc, result.splits)

    result.removed_leftovers = remove_leftovers(output_dir)
    write_dir_atomic(output_dir, write, replace=True)
    (output_dir / WRITER_FILE).unlink(missing_ok=True)
    return result


def _check_arguments(mode: str, num_proc: int, batch_size: int) -> None:
    if mode not in MODES:
        raise DataError(f"--mode must be one of {', '.join(MODES)}, got {mode!r}")
    if num_proc < 1:
        raise DataError(f"--num-proc must be at least 1, got {num_proc}")
    if batch_size < 1:
        raise DataError(f"--batch-size must be at least 1, got {batch_size}")


def _metadata(raw: RawDataset, tokenizer: Any, tokenizer_path: Path) -> dict[str, Any]:
    """What every shard sidecar and the manifest say of the tokenizer and the source."""
    return {
        "tokenizer_sha256": tokenizer_sha256(tokenizer_path),
        "tokenizer_path": str(tokenizer_path),
        "vocab_size": tokenizer.get_vocab_size(with_added_tokens=True),
        "eot_id": special_token_id(tokenizer, EOT, "separates documents (train it with --profile pretrain or chat)"),
        "source": {
            "dataset_dir": str(raw.path.resolve()),
            "sources": [s.get("name") for s in raw.manifest.get("sources", [])],
        },
        "tfkit_version": __version__,
    }
