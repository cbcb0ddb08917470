"""Look at one document of a token shard next to its raw text.

`ShardInspector` opens a tokenized folder (pretrain shards), the raw dataset it was made
from and the tokenizer, and gives for any document index its raw text, the ids stored
in the shard, each token's piece and span of the text, and two checks: decoding the
ids gives back the raw text, and encoding the raw text again gives the stored ids.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tfkit.errors import DataError


@dataclass
class DocumentView:
    """One document, as text and as tokens."""

    split: str
    index: int
    num_documents: int
    text: str
    ids: list[int]
    pieces: list[str]  # the tokenizer's name of each token (byte-level: Ġ is a space)
    token_texts: list[str]  # each token decoded on its own
    spans: list[tuple[int, int]]  # the characters of `text` each token covers (a split character: its first token)
    decoded: str

    @property
    def round_trips(self) -> bool:
        """Decoding the stored ids gives back the raw text exactly."""
        return self.decoded == self.text

    @property
    def matches_encoding(self) -> bool:
        """The spans come from encoding the text again; they line up with the stored ids."""
        return len(self.spans) == len(self.ids)

    def to_dict(self) -> dict[str, Any]:
        return {
            "split": self.split,
            "index": self.index,
            "num_documents": self.num_documents,
            "text": self.text,
            "ids": self.ids,
            "pieces": self.pieces,
            "decoded": self.decoded,
            "round_trips": self.round_trips,
            "matches_encoding": self.matches_encoding,
        }


class ShardInspector:
    """Documents of one split of a pretrain token-shard folder.

    Args:
        tokenized_dir: the folder written by `tfkit tokenizer tokenize --mode pretrain`.
        raw_dataset_dir: the dataset it was made from (default: the one its sidecar names).
        tokenizer_path: the tokenizer (default: the one its sidecar names); it must be the
            same file the shards were made with (same SHA-256).
    """

    def __init__(
        self,
        tokenized_dir: str | Path,
        raw_dataset_dir: str | Path | None = None,
        tokenizer_path: str | Path | None = None,
        split: str = "train",
    ) -> None:
        from tfkit.data.shards import list_splits, read_shard, shard_paths
        from tfkit.data.sources import load_raw
        from tfkit.tokenizer.encode import read_manifest
        from tfkit.tokenizer.train import load_tokenizer, tokenizer_sha256

        tokenized_dir = Path(tokenized_dir)
        manifest = read_manifest(tokenized_dir)
        if manifest.get("mode") != "pretrain":
            raise DataError(f"{tokenized_dir} holds {manifest.get('mode')} data; inspect reads pretrain token shards")
        splits = list_splits(tokenized_dir)
        if split not in splits:
            raise DataError(f"{tokenized_dir} has no {split!r} shard (it has {', '.join(splits) or 'none'})")
        self.split = split
        self.shard = read_shard(shard_paths(tokenized_dir, split)[0])
        self.offsets = self.shard.document_offsets()
        self.num_documents = len(self.offsets) - 1
        meta = self.shard.meta
        tokenizer_path = Path(tokenizer_path or meta.get("tokenizer_path") or "")
        if not tokenizer_path.is_file():
            raise DataError(f"tokenizer not found: {tokenizer_path}; pass --tokenizer-path")
        if tokenizer_sha256(tokenizer_path) != meta["tokenizer_sha256"]:
            raise DataError(f"{tokenizer_path} is not the tokenizer these shards were made with (SHA-256 differs)")
        self.tokenizer = load_tokenizer(tokenizer_path)
        self.tokenizer.encode_special_tokens = True
        raw_dir = raw_dataset_dir or meta.get("source", {}).get("dataset_dir")
        if not raw_dir:
            raise DataError("pass --raw-dataset-dir: the shards do not name their dataset")
        raw = load_raw(raw_dir)
        self.raw = raw.split(split)
        if len(self.raw) != self.num_documents:
            raise DataError(
                f"the {split!r} split of {raw_dir} has {len(self.raw):,} documents, the shard {self.num_documents:,}: "
                "not the dataset these shards were made from"
            )

    def document(self, index: int) -> DocumentView:
        if not 0 <= index < self.num_documents:
            raise DataError(f"--index must be in [0, {self.num_documents - 1}], got {index}")
        start, end = int(self.offsets[index]), int(self.offsets[index + 1]) - 1  # without end-of-text
        ids = [int(i) for i in self.shard.tokens[start:end]]
        text = self.raw[index]["text"] or ""
        encoding = self.tokenizer.encode(text, add_special_tokens=False)
        spans: list[tuple[int, int]] = []
        if encoding.ids == ids:
            pos = 0
            for lo, hi in encoding.offsets:
                lo = max(lo, pos)
                spans.append((lo, max(lo, hi)))
                pos = max(pos, hi)
        return DocumentView(
            split=self.split,
            index=index,
            num_documents=self.num_documents,
            text=text,
            ids=ids,
            pieces=[self.tokenizer.id_to_token(i) or "" for i in ids],
            token_texts=[self.tokenizer.decode([i], skip_special_tokens=False) for i in ids],
            spans=spans,
            decoded=self.tokenizer.decode(ids, skip_special_tokens=False),
        )
