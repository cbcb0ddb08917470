"""Look at one example of tokenized data: a pretraining document, an SFT example or a DPO pair.

`ShardInspector` opens a tokenized folder (pretrain shards), the raw dataset it was made
from and the tokenizer, and gives for any document index its raw text, the ids stored
in the shard, each token's piece and span of the text, and two checks: decoding the
ids gives back the raw text, and encoding the raw text again gives the stored ids.

`ChatInspector` opens an SFT or DPO folder (`tokenize --mode sft|dpo`) and gives for any
index the chat rendering of the example (or of a pair's chosen and rejected sequences)
with its loss mask: the text cut into runs of prompt tokens and of scored tokens, the
ones the loss is computed on. `open_inspector` picks the one a folder needs.
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
        from tfkit.data.tokenized import read_tokenized_manifest

        tokenized_dir = Path(tokenized_dir)
        manifest = read_tokenized_manifest(tokenized_dir)
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
        self.tokenizer = _matching_tokenizer(tokenizer_path, meta, "these shards")
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


def _matching_tokenizer(tokenizer_path: str | Path | None, meta: dict[str, Any], what: str) -> Any:
    """The tokenizer `meta` names (or `tokenizer_path`), refused unless it is the one `what` was made with."""
    from tfkit.tokenizer.train import load_tokenizer, tokenizer_sha256

    path = Path(tokenizer_path or meta.get("tokenizer_path") or "")
    if not path.is_file():
        raise DataError(f"tokenizer not found: {path}; pass --tokenizer-path")
    if meta.get("tokenizer_sha256") and tokenizer_sha256(path) != meta["tokenizer_sha256"]:
        raise DataError(f"{path} is not the tokenizer {what} were made with (SHA-256 differs)")
    tokenizer = load_tokenizer(path)
    tokenizer.encode_special_tokens = True
    return tokenizer


@dataclass
class Segment:
    """A run of tokens that are all prompt (not scored) or all scored by the loss."""

    text: str
    scored: bool
    num_tokens: int


@dataclass
class ChatSequence:
    """One token sequence of chat data with its loss mask (true: the token is a scored target)."""

    name: str  # "example" (SFT), "chosen" or "rejected" (DPO)
    ids: list[int]
    loss_mask: list[bool]
    pieces: list[str]
    token_texts: list[str]
    segments: list[Segment]

    @property
    def scored(self) -> int:
        return sum(self.loss_mask)

    def marked(self, open_mark: str = "[[", close_mark: str = "]]") -> str:
        """The rendering as plain text, each run of scored tokens between `open_mark` and `close_mark`."""
        return "".join(f"{open_mark}{s.text}{close_mark}" if s.scored else s.text for s in self.segments)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "tokens": len(self.ids),
            "scored_tokens": self.scored,
            "marked": self.marked(),
            "segments": [{"text": s.text, "scored": s.scored, "tokens": s.num_tokens} for s in self.segments],
            "ids": self.ids,
            "loss_mask": self.loss_mask,
            "pieces": self.pieces,
        }


@dataclass
class ChatView:
    """One SFT example or one DPO pair (its chosen and rejected sequences)."""

    mode: str  # sft or dpo
    split: str
    index: int
    num_documents: int
    sequences: list[ChatSequence]
    prompt_tokens: int | None = None  # DPO: the prompt both sequences start with

    def to_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "split": self.split,
            "index": self.index,
            "num_examples": self.num_documents,
            "prompt_tokens": self.prompt_tokens,
            "sequences": [s.to_dict() for s in self.sequences],
        }


CHAT_COLUMNS = {
    "sft": (("example", "input_ids", "loss_mask"),),
    "dpo": (
        ("chosen", "chosen_input_ids", "chosen_loss_mask"),
        ("rejected", "rejected_input_ids", "rejected_loss_mask"),
    ),
}


class ChatInspector:
    """Examples of one split of an SFT or DPO folder, rendered with their loss masks.

    Args:
        tokenized_dir: the folder written by `tfkit tokenizer tokenize --mode sft|dpo`.
        tokenizer_path: the tokenizer (default: the one its manifest names); it must be the
            same file the data was made with (same SHA-256).
    """

    def __init__(
        self, tokenized_dir: str | Path, tokenizer_path: str | Path | None = None, split: str = "train"
    ) -> None:
        import datasets

        from tfkit.data.tokenized import read_tokenized_manifest

        tokenized_dir = Path(tokenized_dir)
        manifest = read_tokenized_manifest(tokenized_dir)
        self.mode = manifest["mode"]
        if self.mode not in CHAT_COLUMNS:
            raise DataError(f"{tokenized_dir} holds {self.mode} data; ChatInspector reads SFT or DPO data")
        if not (tokenized_dir / "dataset_dict.json").is_file():
            raise DataError(
                f"{tokenized_dir} is not a tokenized dataset (run `tfkit tokenizer tokenize --mode {self.mode}`)"
            )
        try:
            splits = datasets.load_from_disk(str(tokenized_dir))
        except (FileNotFoundError, ValueError, OSError) as e:
            raise DataError(f"could not open the dataset in {tokenized_dir}: {str(e).splitlines()[0]}") from None
        if split not in splits:
            raise DataError(f"{tokenized_dir} has no {split!r} split (it has {', '.join(splits) or 'none'})")
        self.split = split
        self.data = splits[split]
        needed = [c for _, ids, mask in CHAT_COLUMNS[self.mode] for c in (ids, mask)]
        missing = [c for c in needed if c not in self.data.column_names]
        if missing:
            raise DataError(
                f"the {split} split of {tokenized_dir} has no {', '.join(missing)}: "
                f"not {self.mode.upper()} data (tokenize with --mode {self.mode})"
            )
        self.num_documents = len(self.data)
        self.tokenizer = _matching_tokenizer(tokenizer_path, manifest, "this data")

    def document(self, index: int) -> ChatView:
        if not 0 <= index < self.num_documents:
            raise DataError(f"--index must be in [0, {self.num_documents - 1}], got {index}")
        row = self.data[index]
        sequences = [self._sequence(name, row[ids], row[mask]) for name, ids, mask in CHAT_COLUMNS[self.mode]]
        prompt = row.get("prompt_input_ids")
        return ChatView(
            self.mode, self.split, index, self.num_documents, sequences, None if prompt is None else len(prompt)
        )

    def _sequence(self, name: str, ids: list[int], mask: list[bool]) -> ChatSequence:
        ids, mask = [int(i) for i in ids], [bool(m) for m in mask]
        if len(ids) != len(mask):
            raise DataError(f"example has {len(ids)} ids but a loss mask of {len(mask)}: the data is damaged")
        segments: list[Segment] = []
        start = 0
        for end in range(1, len(ids) + 1):
            if end == len(ids) or mask[end] != mask[start]:
                # whole runs are decoded at once, so a character split across tokens stays whole
                text = self.tokenizer.decode(ids[start:end], skip_special_tokens=False)
                segments.append(Segment(text, mask[start], end - start))
                start = end
        return ChatSequence(
            name=name,
            ids=ids,
            loss_mask=mask,
            pieces=[self.tokenizer.id_to_token(i) or "" for i in ids],
            token_texts=[self.tokenizer.decode([i], skip_special_tokens=False) for i in ids],
            segments=segments,
        )


def open_inspector(
    tokenized_dir: str | Path,
    raw_dataset_dir: str | Path | None = None,
    tokenizer_path: str | Path | None = None,
    split: str = "train",
) -> ShardInspector | ChatInspector:
    """The inspector for what `tokenized_dir` holds: pretraining shards, or SFT / DPO data."""
    from tfkit.data.tokenized import read_tokenized_manifest

    if read_tokenized_manifest(tokenized_dir).get("mode") == "pretrain":
        return ShardInspector(tokenized_dir, raw_dataset_dir, tokenizer_path, split)
    return ChatInspector(tokenized_dir, tokenizer_path, split)
