"""Token shards: exact round trips, dtype choice, refusals, and the shard data source."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from tfkit.config import DataConfig
from tfkit.data.loaders import BatchCursor, ShardSource, open_source, train_batches
from tfkit.data.shards import (
    HEADER_SIZE,
    MAGIC,
    ShardWriter,
    read_shard,
    shard_dtype,
    shard_paths,
    write_shard,
)
from tfkit.errors import DataError


def test_dtype_choice():
    assert shard_dtype(2) == np.uint16
    assert shard_dtype(65536) == np.uint16
    assert shard_dtype(65537) == np.uint32
    assert shard_dtype(1 << 32) == np.uint32
    with pytest.raises(DataError, match="does not fit"):
        shard_dtype((1 << 32) + 1)


@pytest.mark.parametrize("vocab_size", [300, 65536, 65537, 200_000])
def test_round_trip_is_exact(tmp_path, vocab_size):
    rng = np.random.default_rng(0)
    ids = rng.integers(0, vocab_size, size=10_001)
    ids[:2] = [0, vocab_size - 1]  # both ends of the vocabulary
    offsets = np.array([0, 10, 4000, 10_001], dtype=np.uint64)
    path = write_shard(tmp_path, "train", ids, vocab_size, {"tokenizer_sha256": "abc"}, offsets)
    shard = read_shard(path)
    assert shard.dtype == (np.uint16 if vocab_size <= 65536 else np.uint32)
    assert path.stat().st_size == HEADER_SIZE + ids.size * shard.dtype.itemsize
    assert shard.num_tokens == ids.size
    np.testing.assert_array_equal(shard.tokens.astype(np.int64), ids)
    np.testing.assert_array_equal(shard.document_offsets(), offsets)
    assert shard.meta["vocab_size"] == vocab_size and shard.meta["tokenizer_sha256"] == "abc"
    magic, version, itemsize, count = struct.unpack_from("<8sIIQ", path.read_bytes())
    assert (magic, version, itemsize, count) == (MAGIC, 1, shard.dtype.itemsize, ids.size)


def test_ids_outside_the_vocabulary_are_refused_and_nothing_is_left(tmp_path):
    path = tmp_path / "train.bin"
    refused = pytest.raises(DataError, match="token id 65536 is outside the vocabulary of 65,536 ids")
    with refused, ShardWriter(path, 65536) as writer:
        writer.write(np.array([1, 2, 3]))
        writer.write(np.array([65535, 65536]))  # would wrap to 0 in uint16
    with pytest.raises(DataError, match="token id -1"), ShardWriter(path, 100) as writer:
        writer.write([5, -1])
    assert list(tmp_path.iterdir()) == []


def _corrupt(tmp_path, offset: int, data: bytes | None = None, truncate: int = 0):
    path = write_shard(tmp_path, "train", np.arange(100), 1000, {"tokenizer_sha256": "x"})
    raw = bytearray(path.read_bytes())
    if data is not None:
        raw[offset : offset + len(data)] = data
    if truncate:
        raw = raw[:-truncate]
    path.write_bytes(bytes(raw))
    return path


def test_bad_shards_are_refused(tmp_path):
    with pytest.raises(DataError, match="not a tfkit token shard \\(bad magic\\)"):
        read_shard(_corrupt(tmp_path, 0, b"NOTSHARD"))
    with pytest.raises(DataError, match="unknown token dtype \\(3 bytes per token"):
        read_shard(_corrupt(tmp_path, 12, struct.pack("<I", 3)))
    with pytest.raises(DataError, match="shard format version 7"):
        read_shard(_corrupt(tmp_path, 8, struct.pack("<I", 7)))
    with pytest.raises(DataError, match="truncated: the header says 100 tokens"):
        read_shard(_corrupt(tmp_path, 0, truncate=3))
    # a uint32 header on a vocabulary that needs uint16: the sidecar and the shard disagree
    path = write_shard(tmp_path, "train", np.arange(100), 1000, {"tokenizer_sha256": "x"})
    raw = bytearray(path.read_bytes()[:HEADER_SIZE]) + np.arange(100, dtype="<u4").tobytes()
    raw[12:16] = struct.pack("<I", 4)
    path.write_bytes(bytes(raw))
    with pytest.raises(DataError, match="stores uint32 ids, but its vocabulary of 1,000 needs uint16"):
        read_shard(path)
    with pytest.raises(DataError, match="token shard not found"):
        read_shard(tmp_path / "nope.bin")


def _shard_dir(tmp_path, n_train=5000, n_val=700, vocab=500, val_hash="h"):
    rng = np.random.default_rng(1)
    train = rng.integers(0, vocab, n_train)
    write_shard(tmp_path, "train", train, vocab, {"tokenizer_sha256": "h"})
    write_shard(tmp_path, "validation", rng.integers(0, vocab, n_val), vocab, {"tokenizer_sha256": val_hash})
    return train


def test_shard_source_windows(tmp_path):
    train = _shard_dir(tmp_path)
    config = DataConfig(data=str(tmp_path), seq_len=16, batch_size=8, val_examples=10)
    source = open_source(config, seed=3)
    assert isinstance(source, ShardSource)
    assert source.vocab_size == 500 and source.has_optimum is False
    assert source.sequences_per_epoch == 5000 // 16 - 1
    val = read_shard(shard_paths(tmp_path, "validation")[0]).tokens
    assert source.val_tokens.shape == (10, 17) and source.val_tokens.dtype == np.int64
    np.testing.assert_array_equal(source.val_tokens[1], val[16:33])
    epoch0 = source.epoch_tokens(0)[:]
    assert epoch0.shape == (source.sequences_per_epoch, 17)
    # every window is a contiguous slice of the train shard, on one grid of stride seq_len
    starts = [
        int(np.flatnonzero(np.all(np.lib.stride_tricks.sliding_window_view(train, 17) == w, axis=1))[0])
        for w in epoch0[:20]
    ]
    assert len({s % 16 for s in starts}) == 1
    # one epoch visits each grid window once
    assert len(set(map(bytes, epoch0))) == len(epoch0)
    # reproducible from (seed, epoch); another epoch or seed gives another order
    again = ShardSource(config, seed=3)
    np.testing.assert_array_equal(again.epoch_tokens(0)[:], epoch0)
    assert not np.array_equal(source.epoch_tokens(1)[:], epoch0)
    assert not np.array_equal(ShardSource(config, seed=4).epoch_tokens(0)[:], epoch0)
    cursor = BatchCursor()
    batches = train_batches(source, 8, cursor)
    first = next(batches)
    assert first.shape == (8, 17) and first.dtype == np.int64
    np.testing.assert_array_equal(first, epoch0[:8])


def test_shard_source_refusals(tmp_path):
    config = DataConfig(data=str(tmp_path), seq_len=16, batch_size=8)
    tmp_path.mkdir(exist_ok=True)
    with pytest.raises(DataError, match="holds no token shards"):
        open_source(config, 0)
    _shard_dir(tmp_path, val_hash="other")
    with pytest.raises(DataError, match="come from different tokenizers"):
        open_source(config, 0)
    _shard_dir(tmp_path, n_train=20)
    with pytest.raises(DataError, match="too few for --seq-len 16"):
        open_source(config, 0)
    for name in ("validation.bin", "validation.json", "validation.docs.npy"):
        (tmp_path / name).unlink()
    _shard_dir(tmp_path)
    (tmp_path / "validation.bin").unlink()
    with pytest.raises(DataError, match="holds no validation shard"):
        open_source(config, 0)
    meta = json.loads((tmp_path / "train.json").read_text())
    assert meta["num_documents"] == 1 and meta["dtype"] == "uint16"
