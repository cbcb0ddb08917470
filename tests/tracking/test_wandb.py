"""wandb logging in offline mode, with the same keys as the CSV columns.

Offline wandb keeps everything in one ``run-<id>.wandb`` file: a LevelDB-style
log of protobuf records. The reader below decodes it so the test checks what
wandb would upload, not only that a folder appeared.
"""

from __future__ import annotations

import csv
import struct
import time
from pathlib import Path

import pytest

from tfkit.training.loop import train

pytest.importorskip("wandb")

_BLOCK = 32768
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def read_records(path: Path) -> list:
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, chunks, records = 7, b"", []
    while pos + 7 <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < 7:
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if length == 0 and kind == 0:
            pos += left
            continue
        if pos + 7 + length > len(data):  # a record still being written
            break
        chunks += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (_FULL, _LAST):
            record = pb.Record()
            record.ParseFromString(chunks)
            records.append(record)
            chunks = b""
    return records


def finished_records(path: Path, timeout: float = 30.0) -> list:
    """The records of a finished offline run.

    wandb's service process may still be writing the file when `finish()` returns, so wait
    (up to `timeout`) for the run's `exit` record.
    """
    deadline = time.monotonic() + timeout
    while True:
        records = read_records(path) if path.stat().st_size > 7 else []
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.1)


def _keys(items) -> set[str]:
    return {item.key or item.nested_key[0] for item in items}


def test_offline_wandb_run_gets_config_and_metrics(tiny_config, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DISABLE_GIT", "true")
    config = tiny_config.with_updates({"log.wandb_project": "tfkit-test", "train.max_steps": 10})
    result = train(config)
    assert result.status == "completed"
    files = list((result.run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 1
    records = finished_records(files[0])

    config_keys, history_keys, summary_keys = set(), set(), set()
    project = None
    for record in records:
        kind = record.WhichOneof("record_type")
        if kind == "run":
            project = record.run.project
            config_keys |= _keys(record.run.config.update)
        elif kind == "config":
            config_keys |= _keys(record.config.update)
        elif kind == "history":
            history_keys |= _keys(record.history.item)
        elif kind == "summary":
            summary_keys |= _keys(record.summary.update)

    assert project == "tfkit-test"
    for key in ("num_heads", "width", "lr", "seq_len", "num_params"):
        assert key in config_keys
    # One name per concept: every CSV column reaches wandb under the same name.
    for log in ("train_log.csv", "val_log.csv"):
        with open(result.run_dir / log) as fh:
            columns = set(next(csv.reader(fh)))
        assert columns <= history_keys | summary_keys, columns - history_keys - summary_keys
    for key in ("train_loss", "val_loss", "excess_loss", "val_loss_1", "status"):
        assert key in summary_keys
