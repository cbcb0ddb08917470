"""Count documents and tokens of tokenized data, per split and in total."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tfkit.errors import DataError


@dataclass
class TokenCount:
    """Documents and tokens of one split (or of all splits: split "total").

    `tokens` counts the documents' own tokens; pretraining shards also hold one
    end-of-text token per document (`shard_tokens` = tokens + documents).
    """

    split: str
    documents: int
    tokens: int
    mean: float
    median: float
    max: int
    shard_tokens: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _count(split: str, lengths: np.ndarray, shard_tokens: int | None) -> TokenCount:
    lengths = np.asarray(lengths, dtype=np.int64)
    if lengths.size == 0:
        return TokenCount(split, 0, 0, 0.0, 0.0, 0, shard_tokens)
    return TokenCount(
        split=split,
        documents=int(lengths.size),
        tokens=int(lengths.sum()),
        mean=float(lengths.mean()),
        median=float(np.median(lengths)),
        max=int(lengths.max()),
        shard_tokens=shard_tokens,
    )


def document_lengths(tokenized_dir: str | Path) -> dict[str, np.ndarray]:
    """Tokens per document of every split (without the end-of-text separators)."""
    from tfkit.data.shards import list_splits, read_shard, shard_paths
    from tfkit.data.tokenized import read_tokenized_manifest

    tokenized_dir = Path(tokenized_dir)
    manifest = read_tokenized_manifest(tokenized_dir)
    if manifest.get("mode") == "pretrain":
        out = {}
        for split in list_splits(tokenized_dir):
            offsets = read_shard(shard_paths(tokenized_dir, split)[0], check_ids=False).document_offsets()
            out[split] = np.diff(offsets.astype(np.int64)) - 1
        return out
    import datasets

    try:
        splits = datasets.load_from_disk(str(tokenized_dir))
    except (FileNotFoundError, ValueError, OSError) as e:
        raise DataError(f"could not open the tokenized data in {tokenized_dir}: {e}") from None
    return {name: np.asarray(ds.with_format("numpy")["num_tokens"]) for name, ds in splits.items()}


def count_tokens(tokenized_dir: str | Path) -> list[TokenCount]:
    """One `TokenCount` per split, then the total over all splits."""
    from tfkit.data.tokenized import read_tokenized_manifest

    pretrain = read_tokenized_manifest(tokenized_dir).get("mode") == "pretrain"
    lengths = document_lengths(tokenized_dir)
    if not lengths:
        raise DataError(f"{tokenized_dir} holds no splits")
    rows = [_count(split, lens, int(lens.sum() + lens.size) if pretrain else None) for split, lens in lengths.items()]
    every = np.concatenate(list(lengths.values()))
    rows.append(_count("total", every, sum(r.shard_tokens or 0 for r in rows) if pretrain else None))
    return rows
