"""Tokenizers across the border: a run's tokenizer.json as transformers' fast tokenizer, and back.

transformers loads a folder's `tokenizer.json` (the `tokenizers` file tfkit trains) as a
`PreTrainedTokenizerFast` when `tokenizer_config.json` names that class; the special
tokens are named there too: `<|endoftext|>` is the end of sequence, the chat tokens
are additional special tokens. A built-in process has no tokenizer: its symbols get a
word-level one, token i written as the decimal "i", whitespace between tokens.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tfkit.tokenizer.train import EOT


def process_tokenizer_json(vocab_size: int) -> str:
    """tokenizer.json of a word-level tokenizer for the symbols 0 .. vocab_size - 1 ("0 2 1" -> [0, 2, 1])."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    tokenizer = Tokenizer(models.WordLevel({str(i): i for i in range(vocab_size)}, unk_token=None))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return tokenizer.to_str(pretty=True)


def special_tokens(tokenizer_json: str) -> list[str]:
    """The special tokens of a tokenizer.json, in id order."""
    added = json.loads(tokenizer_json).get("added_tokens") or []
    return [t["content"] for t in sorted(added, key=lambda t: t["id"]) if t.get("special")]


def write_tokenizer(folder: Path, tokenizer_json: str, max_seq_len: int) -> dict[str, Any]:
    """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json; returns the special tokens map."""
    specials = special_tokens(tokenizer_json)
    mapping: dict[str, Any] = {}
    if EOT in specials:
        mapping["eos_token"] = EOT
        mapping["bos_token"] = EOT  # GPT-2's convention: one token separates documents
    extra = [t for t in specials if t != EOT]
    if extra:
        mapping["additional_special_tokens"] = extra
    (folder / "tokenizer.json").write_text(tokenizer_json)
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": max_seq_len,
        "clean_up_tokenization_spaces": False,
        **mapping,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (folder / "special_tokens_map.json").write_text(json.dumps(mapping, indent=2) + "\n")
    return mapping
