"""Pretraining shards: every split of a text dataset becomes one token shard (`tfkit.data.shards`),
the documents' ids in order, each followed by `<|endoftext|>`, with its document offsets and
sidecar. With several processes, contiguous ranges of the split are encoded by worker
processes (`tfkit.tokenizer.workers`) into part shards joined in order, so the shard is the
one a single process writes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from tfkit.data.shards import ShardWriter, save_offsets, shard_paths, write_sidecar
from tfkit.tokenizer.batches import encode_range, text_bytes, text_tokenizer
from tfkit.tokenizer.output import SplitStats
from tfkit.tokenizer.train import CorpusProgress
from tfkit.tokenizer.workers import run_workers


def tokenize_pretrain_split(
    raw: Any,
    split: str,
    tokenizer_path: Path,
    out: Path,
    meta: dict[str, Any],
    num_proc: int,
    batch_size: int,
    progress: CorpusProgress,
) -> SplitStats:
    """Write one split's shard, document offsets and sidecar into `out`; returns what it holds."""
    dataset = raw.splits[split]
    n = len(dataset)
    nbytes = text_bytes(dataset.data.column("text"))
    progress.start(split, n, nbytes)
    shard_path, sidecar_path, docs_path = shard_paths(out, split)
    vocab_size, eot_id = meta["vocab_size"], meta["eot_id"]
    workers = max(1, min(num_proc, -(-n // batch_size)))  # no process for less than a batch
    with ShardWriter(shard_path, vocab_size) as writer:
        if workers == 1:
            tokenizer = text_tokenizer(str(tokenizer_path))
            lengths = encode_range(
                dataset.data.column("text"), 0, n, tokenizer, eot_id, writer, batch_size, progress.advance
            )
        else:
            jobs = _jobs(raw, split, tokenizer_path, out / ".parts", n, workers, meta, batch_size)
            lengths = _encode_in_workers(jobs, writer, out / ".parts", progress)
    offsets = np.zeros(n + 1, dtype=np.uint64)
    offsets[1:] = np.cumsum(lengths + 1)
    num_tokens = int(offsets[-1])
    save_offsets(docs_path, offsets)
    write_sidecar(
        sidecar_path,
        {
            **meta,
            "split": split,
            "dtype": writer.dtype.name,
            "num_tokens": num_tokens,
            "num_documents": n,
            "text_bytes": nbytes,
        },
    )
    return SplitStats(documents=n, tokens=num_tokens, nbytes=nbytes)


def _jobs(
    raw: Any,
    split: str,
    tokenizer_path: Path,
    parts: Path,
    n: int,
    workers: int,
    meta: dict[str, Any],
    batch_size: int,
) -> list[dict[str, Any]]:
    """One job per worker: a contiguous range of the split's rows, and where its part goes."""
    bounds = np.linspace(0, n, workers + 1).astype(np.int64)
    return [
        {
            "rank": rank,
            "split_dir": str(raw.path / split),
            "tokenizer_path": str(tokenizer_path),
            "start": int(bounds[rank]),
            "end": int(bounds[rank + 1]),
            "vocab_size": meta["vocab_size"],
            "eot_id": meta["eot_id"],
            "batch_size": batch_size,
            "part": str(parts / f"{split}-{rank}.bin"),
            "lengths": str(parts / f"{split}-{rank}.npy"),
        }
        for rank in range(workers)
    ]


def _encode_in_workers(
    jobs: list[dict[str, Any]], writer: ShardWriter, parts: Path, progress: CorpusProgress
) -> np.ndarray:
    """Run the jobs in worker processes, then append their part shards in order; returns the document lengths."""
    parts.mkdir(exist_ok=True)
    threads = max(1, (os.cpu_count() or 1) // len(jobs))
    run_workers(jobs, progress, threads)
    lengths_parts = []
    for job in jobs:
        writer.append_shard(job["part"])
        lengths_parts.append(np.load(job["lengths"]))
        Path(job["part"]).unlink()
        Path(job["lengths"]).unlink()
    parts.rmdir()
    return np.concatenate(lengths_parts)
