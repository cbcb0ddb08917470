"""`import hf --chat-tokens`: tfkit's chat tokens added to an imported tokenizer, and rows for them in the model.

tfkit's SFT and DPO data (`tfkit tokenizer tokenize --mode sft|dpo`) and `tfkit generate`
need `<|endoftext|>`, `<|user|>`, `<|assistant|>` and `<|end|>`; OpenAI's GPT-2 tokenizer
has only `<|endoftext|>`. Those it lacks are added as `tokenizers` adds special tokens
(`Tokenizer.add_special_tokens`): special, not normalized, with the next ids after the
tokenizer's own, in that order, as a `--profile chat` tokenizer holds them. Nothing else
changes: tfkit's chat tokenizers have no post-processor of their own (tfkit places the
chat tokens by id), and `tfkit export hf` gives a tokenizer with them a chat template.
`<|system|>`, which tfkit's data never holds, is not added.

The token embedding (and an untied output layer) gets a row for each new id, set to the
mean of the rows of the ids the tokenizer had: a new token's embedding is an average
token, and its logit is the average logit. Where the embedding already has rows beyond
the tokenizer's ids (a vocabulary padded to a round size), a new id that falls among
them takes that unused row, set to the mean as well, and the embedding grows only by the
ids past its end. The logits of the ids that were there do not change.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from tfkit.config import ModelConfig
from tfkit.tokenizer.train import ASSISTANT, END, EOT, USER

CHAT_TOKENS = (EOT, USER, ASSISTANT, END)  # what `has_chat_tokens`, `chat_tokens` and tokenize --mode sft need
TABLES = ("transformer.wte.weight", "lm_head.weight")  # the state dict's (vocab_size, width) matrices


@dataclass
class ChatTokens:
    """The tokenizer and model with the chat tokens: `added` maps each new token to its id (empty: none added)."""

    tokenizer_json: str
    state: dict[str, torch.Tensor]
    config: ModelConfig
    added: dict[str, int]
    known_ids: int  # the ids the tokenizer had, 0 .. known_ids - 1: the rows averaged
    padding_rows: int  # rows of the embedding past known_ids before any was taken
    reused_rows: int  # new ids that took such a row rather than a new one


def add_chat_tokens(tokenizer_json: str, state: dict[str, torch.Tensor], config: ModelConfig) -> ChatTokens:
    """`tokenizer_json` with the chat tokens it lacks, and the state dict and config grown to hold their ids."""
    from tokenizers import AddedToken, Tokenizer

    tokenizer = Tokenizer.from_str(tokenizer_json)
    known = max(tokenizer.get_vocab(with_added_tokens=True).values(), default=-1) + 1
    vocab = int(config.vocab_size)  # type: ignore[arg-type]
    missing = [t for t in CHAT_TOKENS if tokenizer.token_to_id(t) is None]
    if not missing:
        return ChatTokens(tokenizer_json, state, config, {}, known, vocab - known, 0)
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in missing])
    added = {t: int(tokenizer.token_to_id(t)) for t in missing}
    grown, size = grow_rows(state, sorted(added.values()), known, vocab, config.tie_embeddings)
    return ChatTokens(
        tokenizer.to_str(pretty=True),
        grown,
        dataclasses.replace(config, vocab_size=size),
        added,
        known,
        vocab - known,
        sum(i < vocab for i in added.values()),
    )


def grow_rows(
    state: dict[str, torch.Tensor], ids: list[int], known: int, vocab_size: int, tied: bool
) -> tuple[dict[str, torch.Tensor], int]:
    """(the state dict with rows `ids` of its token tables set to the mean of rows 0 .. known - 1, the new vocab_size).

    The tables grow to hold the largest id; a tied output layer stays the embedding's tensor.
    """
    size = max(vocab_size, max(ids) + 1)
    out = dict(state)
    for name in TABLES[:1] if tied else TABLES:
        table = state[name]
        mean = table[:known].to(torch.float64).mean(dim=0).to(table.dtype)
        grown = torch.cat([table, mean.expand(size - vocab_size, -1)])
        grown[ids] = mean
        out[name] = grown
    if tied:
        out[TABLES[1]] = out[TABLES[0]]
    return out, size


def describe(result: ChatTokens) -> dict[str, Any]:
    """What `import hf --chat-tokens` records in the run's meta: the tokens added, their ids and rows."""
    return {
        "added": result.added,
        "init": f"mean of the embedding rows of ids 0..{result.known_ids - 1}",
        "reused_padding_rows": result.reused_rows,
    }
