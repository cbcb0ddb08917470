"""Encoding documents in batches, as every tokenize mode does.

Special tokens written literally in a document are plain text, never control tokens
(`text_tokenizer`); batches are encoded without special tokens (`encode_batch`). For
pretraining, documents are flattened into one run of ids, each followed by `<|endoftext|>`,
a range of rows at a time (`encode_range`), read from a saved split with pyarrow alone
(`text_column`), so a worker process need not import `datasets`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from tfkit.tokenizer.train import load_tokenizer


def text_bytes(column: Any) -> int:
    import pyarrow.compute as pc

    return pc.sum(pc.binary_length(column)).as_py() or 0


def text_tokenizer(path: str) -> Any:
    tokenizer = load_tokenizer(path)
    tokenizer.encode_special_tokens = True  # "<|endoftext|>" inside a document is text, not a separator
    return tokenizer


def encode_batch(tokenizer: Any, texts: list[str]) -> list[Any]:
    """Encode without special tokens; `encode_batch_fast` (no offsets) where this tokenizers has it."""
    encode = getattr(tokenizer, "encode_batch_fast", tokenizer.encode_batch)
    return encode(texts, add_special_tokens=False)


def _flatten(encodings: list[Any], eot_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Ids of encoded documents, each followed by end-of-text, and each document's length without it."""
    flat: list[int] = []
    lengths = np.empty(len(encodings), dtype=np.int64)
    for i, enc in enumerate(encodings):
        ids = enc.ids
        lengths[i] = len(ids)
        flat += ids
        flat.append(eot_id)
    return np.array(flat, dtype=np.int64), lengths


def text_column(split_dir: str | Path) -> Any:
    """The `text` column of one split saved by `save_to_disk`, memory-mapped with pyarrow alone.

    Worker processes read the Arrow files directly: importing `datasets` would cost each of
    them about a second.
    """
    import pyarrow as pa

    split_dir = Path(split_dir)
    state = json.loads((split_dir / "state.json").read_text())
    tables = [
        pa.ipc.open_stream(pa.memory_map(str(split_dir / f["filename"]))).read_all() for f in state["_data_files"]
    ]
    return pa.concat_tables(tables).column("text")


def encode_range(
    column: Any,
    start: int,
    end: int,
    tokenizer: Any,
    eot_id: int,
    writer: Any,
    batch_size: int,
    advance: Any,
) -> np.ndarray:
    """Encode rows [start, end) of an Arrow text column into `writer`; returns the document lengths.

    A helper thread reads and encodes the next batch (the tokenizer releases the GIL) while
    this one flattens and writes the current one.
    """
    from concurrent.futures import ThreadPoolExecutor

    def read_and_encode(lo: int) -> tuple[list[Any], int]:
        batch = column.slice(lo, min(batch_size, end - lo))
        texts = [t or "" for t in batch.to_pylist()]
        return encode_batch(tokenizer, texts), text_bytes(batch)

    lengths = []
    starts = list(range(start, end, batch_size))
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(read_and_encode, starts[0]) if starts else None
        for k in range(len(starts)):
            encodings, nbytes = pending.result()  # type: ignore[union-attr]
            if k + 1 < len(starts):
                pending = pool.submit(read_and_encode, starts[k + 1])
            ids, lens = _flatten(encodings, eot_id)
            writer.write(ids)
            lengths.append(lens)
            advance(len(lens), nbytes)
    return np.concatenate(lengths) if lengths else np.zeros(0, dtype=np.int64)
