"""A folder of tokenized data and its manifest, `tfkit_tokenized.json`.

`tfkit tokenizer tokenize` writes one per output folder (`tfkit.tokenizer.encode`); its
`mode` says what the folder holds: pretraining token shards (`pretrain`,
`tfkit.data.shards`) or an SFT or DPO dataset of token ids and loss masks
(`tfkit.data.chat`). Readers check it here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tfkit.data.shards import brief_repr, read_json_object, whole_number
from tfkit.errors import DataError

MODES = ("pretrain", "sft", "dpo")
TOKENIZED_MANIFEST = "tfkit_tokenized.json"


def read_tokenized_manifest(tokenized_dir: str | Path) -> dict[str, Any]:
    """The `tfkit_tokenized.json` of a folder written by `tfkit.tokenizer.encode.tokenize_dataset`."""
    path = Path(tokenized_dir)
    if not path.is_dir():
        raise DataError(f"tokenized folder not found: {path}")
    manifest = path / TOKENIZED_MANIFEST
    if not manifest.is_file():
        raise DataError(f"{path} holds no tokenized data ({TOKENIZED_MANIFEST} is missing)")
    return parse_tokenized_manifest(manifest)


def parse_tokenized_manifest(manifest: Path) -> dict[str, Any]:
    """A `tfkit_tokenized.json` read and checked: a JSON object whose `mode` is one of `MODES`."""
    data = read_json_object(manifest, "a tokenized-data manifest")
    mode = data.get("mode")
    if mode not in MODES:
        raise DataError(f"{manifest}: 'mode' must be one of {', '.join(MODES)}, got {brief_repr(mode)}")
    if data.get("vocab_size") is not None:
        whole_number(data, "vocab_size", manifest, 1)
    return data
