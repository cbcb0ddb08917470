"""Sampling from a GPT with a key/value cache.

`generate_tokens(model, prompt_ids, max_new_tokens, ...)` yields new token ids one at a
time, so a caller can stream them. The prompt is run once to fill a `KVCache`; every
later step feeds only the newest token, whose query attends to all cached keys. When
the context is full the cache is rebuilt from the last `max_seq_len` tokens, which is
what an uncached model cropped to its context sees, so cached and uncached greedy
generation give the same tokens. A `--mixer ssm` model caches each layer's recurrent
state (`StateCache`) instead of keys and values: a fixed size whatever the length.

Sampling: `temperature` 0 is greedy (argmax); otherwise logits are divided by the
temperature, cut to the `top_k` largest and to the smallest set whose probability
reaches `top_p` (nucleus), and sampled with the given `torch.Generator`.

A prompt longer than the context keeps only its last `max_seq_len` tokens;
`generate_text` says so through its `warn` callback, since the cut may take a chat
header with it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch

from tfkit.errors import ConfigError
from tfkit.models.cache import KVCache
from tfkit.models.gpt import GPT


def check_sampling(temperature: float, top_k: int | None = None, top_p: float | None = None) -> None:
    """Refuse sampling settings that cannot give a distribution (NaN, infinite, out of range)."""
    if not math.isfinite(temperature) or temperature < 0:
        raise ConfigError(f"--temperature must be a finite number >= 0 (0 is greedy), got {temperature}")
    if top_k is not None and top_k < 1:
        raise ConfigError(f"--top-k must be at least 1, got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:  # also refuses NaN
        raise ConfigError(f"--top-p must be in (0, 1], got {top_p}")


def check_prompt(prompt: str) -> None:
    """Refuse a prompt holding bytes that were not valid UTF-8 (kept as lone surrogates by Python's argv decoding)."""
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError as e:
        char = prompt[e.start]
        what = f"byte 0x{ord(char) - 0xDC00:02x}" if 0xDC80 <= ord(char) <= 0xDCFF else f"U+{ord(char):04X}"
        raise ConfigError(f"--prompt is not valid UTF-8 ({what} at character {e.start + 1})") from None


def sample_next(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Next token ids (B,) from last-position logits (B, V)."""
    if temperature <= 0:
        return logits.argmax(-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)  # (B, V)
        probs = sorted_logits.softmax(-1)
        # drop a token when the tokens ranked above it already reach top_p (the first always stays)
        drop = probs.cumsum(-1) - probs >= top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = logits.softmax(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.no_grad()
def generate_tokens(
    model: GPT,
    prompt_ids: list[int],
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
    stop_ids: Iterable[int] = (),
    use_cache: bool = True,
) -> Iterator[int]:
    """Yield up to `max_new_tokens` ids continuing `prompt_ids`; stops after yielding a stop id.

    The prompt is cropped to its last `max_seq_len` tokens, and so is the context of every
    step (a sliding window).
    """
    if not prompt_ids:
        raise ValueError("generation needs at least one prompt token")
    model.eval()
    device = next(model.parameters()).device
    window = model.config.max_seq_len
    stops = set(stop_ids)
    tokens = list(prompt_ids)
    cache = KVCache(model) if use_cache else None
    pending = tokens[-window:]  # tokens not yet in the cache
    for _ in range(max_new_tokens):
        if cache is None:
            logits = model(torch.tensor([tokens[-window:]], device=device))  # (1, T, V)
        else:
            if cache.length + len(pending) > window:
                cache.reset()  # context full: rerun the last `window` tokens, as an uncached model would
                pending = tokens[-window:]
            logits = model(torch.tensor([pending], device=device), cache=cache)  # (1, T, V)
        token = int(sample_next(logits[:, -1], temperature, top_k, top_p, generator).item())
        tokens.append(token)
        pending = [token]
        yield token
        if token in stops:
            return


class TextStream:
    """Turns a stream of token ids into text pieces, holding back half a UTF-8 character.

    Byte-level BPE tokens can split a character; the decoded text of all ids so far is
    compared with what was already given out, and only complete characters are given.
    """

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.emitted = ""

    def push(self, token: int) -> str:
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):
            return ""
        piece = text[len(self.emitted) :]
        self.emitted = text
        return piece


def chat_tokens(tokenizer: Any) -> dict[str, int] | None:
    """Ids of the chat template's tokens, or None when the tokenizer is not a chat-profile one."""
    from tfkit.tokenizer.train import ASSISTANT, END, EOT, USER

    ids = {token: tokenizer.token_to_id(token) for token in (EOT, USER, ASSISTANT, END)}
    return None if None in ids.values() else ids  # type: ignore[return-value]


def prompt_ids(tokenizer: Any, prompt: str, chat: bool | None = None) -> tuple[list[int], set[int]]:
    """(prompt token ids, ids that end a reply) for `prompt`.

    With a chat-profile tokenizer (or `chat=True`) the prompt is one user turn, as SFT and
    DPO data are rendered: `<|user|>{prompt}<|end|><|assistant|>`, and the reply ends at
    `<|end|>`; otherwise the prompt is plain text and `<|endoftext|>` ends the reply.
    """
    from tfkit.errors import DataError
    from tfkit.tokenizer.train import ASSISTANT, END, EOT, USER

    special = chat_tokens(tokenizer)
    if chat and special is None:
        raise DataError("--chat needs a chat-profile tokenizer (<|user|>, <|assistant|>, <|end|>, <|endoftext|>)")
    text_ids = tokenizer.encode(prompt, add_special_tokens=False).ids
    if special is not None and chat is not False:
        return [special[USER], *text_ids, special[END], special[ASSISTANT]], {special[END], special[EOT]}
    eot = tokenizer.token_to_id(EOT)
    stops = {eot} if eot is not None else set()
    if not text_ids:
        if eot is None:
            raise DataError("--prompt is empty and the tokenizer has no <|endoftext|> to start from")
        text_ids = [eot]
    return text_ids, stops


def generate_text(
    model: GPT,
    tokenizer: Any,
    prompt: str,
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int = 0,
    chat: bool | None = None,
    warn: Callable[[str], None] | None = None,
) -> Iterator[tuple[int, str]]:
    """Yield (token id, new text) for each generated token of a reply to `prompt`.

    The text pieces joined are the decoded reply (special tokens left out); a piece is
    empty while a character is still incomplete.

    Args:
        warn: called with a message when the prompt is longer than the model's context
            and its first tokens are cut.
    """
    check_sampling(temperature, top_k, top_p)
    check_prompt(prompt)
    ids, stops = prompt_ids(tokenizer, prompt, chat)
    window = model.config.max_seq_len
    if len(ids) > window and warn is not None:
        chat_header = chat is not False and chat_tokens(tokenizer) is not None
        warn(
            f"the prompt is {len(ids):,} tokens, longer than the model's context of {window:,}: its first "
            f"{len(ids) - window:,} tokens are cut" + (", the chat header <|user|> with them" if chat_header else "")
        )
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    stream = TextStream(tokenizer)
    tokens = generate_tokens(
        model,
        ids,
        max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        generator=generator,
        stop_ids=stops,
    )
    for token in tokens:
        yield token, stream.push(token)
