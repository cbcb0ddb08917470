"""Tokenizers across the border: a run's tokenizer.json as transformers' fast tokenizer, and back.

transformers loads a folder's `tokenizer.json` (the `tokenizers` file tfkit trains) as a
`PreTrainedTokenizerFast` when `tokenizer_config.json` names that class; the special
tokens are named there too: `<|endoftext|>` is the end of sequence, the chat tokens
are additional special tokens. A built-in process has no tokenizer: its symbols get a
word-level one, token i written as the decimal "i", whitespace between tokens.

A chat tokenizer (one with `<|endoftext|>`, `<|user|>`, `<|assistant|>` and `<|end|>`, the
tokens `tfkit tokenizer tokenize --mode sft` needs and `tfkit generate` looks for) gets a
`chat_template` in tokenizer_config.json that renders a conversation as tfkit's SFT data
is rendered: an instruction record is the messages `[{"role": "user", "content":
instruction, a blank line, input}, {"role": "assistant", "content": output}]`, written

    <|user|>{user}<|end|><|assistant|>{assistant}<|end|><|endoftext|>

and `add_generation_prompt` ends the user turn with `<|assistant|>` (the prompt of SFT and
DPO data). tfkit's data is one user turn and one reply; more turns continue the pattern
(`<|endoftext|>` only after the last reply), and a system message is
`<|system|>{system}<|end|>` (where the tokenizer has `<|system|>`): both are renderings
tfkit's own data never holds. Other roles are refused. Ids equal tfkit's as long as the
text holds no special token's string (tfkit encodes such a string as text).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tfkit.tokenizer.train import ASSISTANT, END, EOT, SYSTEM, USER


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


def has_chat_tokens(tokenizer_json: str) -> bool:
    """Whether the tokenizer has the tokens of tfkit's chat rendering (what `tfkit generate` looks for)."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_str(tokenizer_json)
    return all(tokenizer.token_to_id(t) is not None for t in (EOT, USER, ASSISTANT, END))


def chat_template(tokenizer_json: str) -> str | None:
    """The Jinja chat template that renders messages as tfkit's SFT data; None for a tokenizer without chat tokens."""
    from tokenizers import Tokenizer

    if not has_chat_tokens(tokenizer_json):
        return None
    system = (
        f"{SYSTEM}{{{{ content }}}}{END}"
        if Tokenizer.from_str(tokenizer_json).token_to_id(SYSTEM) is not None
        else "{{ raise_exception('this tokenizer has no " + SYSTEM + " token for a system message') }}"
    )
    return (
        "{%- for message in messages -%}"
        "{%- if message['content'] is string -%}{%- set content = message['content'] -%}"
        "{%- else -%}{%- set content = message['content'] | selectattr('type', 'equalto', 'text') "
        "| map(attribute='text') | join('') -%}{%- endif -%}"
        f"{{%- if message['role'] == 'user' -%}}{USER}{{{{ content }}}}{END}"
        # {% generation %} marks what SFT scores (the reply and its <|end|>): transformers'
        # return_assistant_tokens_mask gives tfkit's loss_mask
        f"{{%- elif message['role'] == 'assistant' -%}}{ASSISTANT}{{% generation %}}{{{{ content }}}}{END}"
        "{% endgeneration %}"
        f"{{%- elif message['role'] == 'system' -%}}{system}"
        "{%- else -%}{{ raise_exception('role ' ~ message['role'] ~ ' is not one of user, assistant, system') }}"
        "{%- endif -%}"
        "{%- endfor -%}"
        f"{{%- if add_generation_prompt -%}}{ASSISTANT}"
        f"{{%- elif messages and messages[-1]['role'] == 'assistant' -%}}{EOT}"
        "{%- endif -%}"
    )


def write_tokenizer(folder: Path, tokenizer_json: str, max_seq_len: int) -> dict[str, Any]:
    """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json; returns the special tokens map.

    A chat tokenizer's tokenizer_config.json holds its `chat_template`.
    """
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
    template = chat_template(tokenizer_json)
    if template is not None:
        config["chat_template"] = template
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (folder / "special_tokens_map.json").write_text(json.dumps(mapping, indent=2) + "\n")
    return mapping
