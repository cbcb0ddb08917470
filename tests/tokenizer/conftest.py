"""A small story corpus saved as a dataset, and byte-level BPE tokenizers trained on it."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.textdata import instruction_records, preference_records, write_jsonl, write_stories

# a document that spells out special tokens: they must stay text
LITERAL = "The end. <|endoftext|> and <|user|> are just text here, as is ünïcödé 日本."


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> dict[str, Path]:
    """Raw datasets (text, instruction, preference) and tokenizers (pretrain and chat profiles)."""
    from tfkit.data.sources import download
    from tfkit.tokenizer.train import train_tokenizer

    root = tmp_path_factory.mktemp("corpus")
    cache = str(root / "cache")
    write_stories(root / "stories.txt", 600, seed=0, extra=[LITERAL])
    download([str(root / "stories.txt")], root / "raw", val_fraction=0.1, seed=0, sample_by="line", cache_dir=cache)
    train_tokenizer(root / "raw", root / "tokenizer.json", vocab_size=400, min_frequency=2)
    write_jsonl(root / "sft.jsonl", instruction_records(120))
    download([str(root / "sft.jsonl")], root / "sft_raw", val_fraction=0.1, cache_dir=cache)
    write_jsonl(root / "dpo.jsonl", preference_records(80))
    download([str(root / "dpo.jsonl")], root / "dpo_raw", val_fraction=0.1, cache_dir=cache)
    train_tokenizer(root / "sft_raw", root / "chat.json", vocab_size=400, profile="chat")
    return {
        "root": root,
        "stories": root / "stories.txt",
        "raw": root / "raw",
        "tokenizer": root / "tokenizer.json",
        "sft_raw": root / "sft_raw",
        "dpo_raw": root / "dpo_raw",
        "chat": root / "chat.json",
    }
