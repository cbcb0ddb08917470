"""SFT and DPO data as token-id datasets, through the chat template.

* `sft`: instruction/input/output records rendered as

      <|user|>{instruction}\\n\\n{input}<|end|><|assistant|>{output}<|end|><|endoftext|>

  into `input_ids` and a `loss_mask` that is true only on the response: the output's
  tokens and the `<|end|>` that closes it.
* `dpo`: prompt/chosen/rejected records as `prompt_input_ids` (the user turn up to
  `<|assistant|>`), and `chosen_input_ids` / `rejected_input_ids` (prompt + response +
  `<|end|>`) with their loss masks (true on the response).

Records are encoded by `datasets.map`, in `num_proc` processes where asked.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np

from tfkit.data.kinds import text_columns
from tfkit.tokenizer.batches import encode_batch, text_bytes, text_tokenizer
from tfkit.tokenizer.output import SplitStats
from tfkit.tokenizer.train import ASSISTANT, END, EOT, USER, CorpusProgress, special_token_id

_CHAT_CACHE: dict[str, tuple[Any, dict[str, int]]] = {}


def _chat_tokenizer(path: str) -> tuple[Any, dict[str, int]]:
    """The tokenizer and its chat token ids, loaded once per process."""
    if path not in _CHAT_CACHE:
        tokenizer = text_tokenizer(path)
        why = (
            "the chat template needs (train the tokenizer with --profile chat; "
            "`tfkit import hf MODEL --out RUN --chat-tokens` adds them to an imported model's)"
        )
        ids = {token: special_token_id(tokenizer, token, why) for token in (EOT, USER, ASSISTANT, END)}
        _CHAT_CACHE[path] = (tokenizer, ids)
    return _CHAT_CACHE[path]


def _prompt_ids(tokenizer: Any, ids: dict[str, int], prompts: list[str]) -> list[list[int]]:
    encodings = encode_batch(tokenizer, prompts)
    return [[ids[USER], *enc.ids, ids[END], ids[ASSISTANT]] for enc in encodings]


def _response_ids(tokenizer: Any, ids: dict[str, int], responses: list[str]) -> list[list[int]]:
    encodings = encode_batch(tokenizer, responses)
    return [[*enc.ids, ids[END]] for enc in encodings]


def sft_batch(batch: dict[str, list[str]], tokenizer_path: str) -> dict[str, list[Any]]:
    """Render instruction/input/output records through the chat template (a `datasets.map` function)."""
    tokenizer, ids = _chat_tokenizer(tokenizer_path)
    prompts = [
        f"{ins}\n\n{inp}" if inp else ins for ins, inp in zip(batch["instruction"], batch["input"], strict=False)
    ]
    input_ids, loss_mask = [], []
    for prompt, response in zip(
        _prompt_ids(tokenizer, ids, prompts), _response_ids(tokenizer, ids, batch["output"]), strict=False
    ):
        input_ids.append(prompt + response + [ids[EOT]])
        loss_mask.append([False] * len(prompt) + [True] * len(response) + [False])
    return {"input_ids": input_ids, "loss_mask": loss_mask, "num_tokens": [len(x) for x in input_ids]}


def dpo_batch(batch: dict[str, list[str]], tokenizer_path: str) -> dict[str, list[Any]]:
    """Prompt, chosen and rejected token ids with their loss masks (a `datasets.map` function)."""
    tokenizer, ids = _chat_tokenizer(tokenizer_path)
    prompts = _prompt_ids(tokenizer, ids, batch["prompt"])
    out: dict[str, list[Any]] = {"prompt_input_ids": prompts, "num_tokens": []}
    for side in ("chosen", "rejected"):
        responses = _response_ids(tokenizer, ids, batch[side])
        out[f"{side}_input_ids"] = [p + r for p, r in zip(prompts, responses, strict=False)]
        out[f"{side}_loss_mask"] = [
            [False] * len(p) + [True] * len(r) for p, r in zip(prompts, responses, strict=False)
        ]
    out["num_tokens"] = [
        len(c) + len(r) - len(p)
        for p, c, r in zip(prompts, out["chosen_input_ids"], out["rejected_input_ids"], strict=False)
    ]
    return out


def _chat_features(mode: str) -> Any:
    from datasets import Features, Sequence, Value

    ids, mask = Sequence(Value("int32")), Sequence(Value("bool"))
    if mode == "sft":
        return Features({"input_ids": ids, "loss_mask": mask, "num_tokens": Value("int64")})
    return Features(
        {
            "prompt_input_ids": ids,
            "num_tokens": Value("int64"),
            "chosen_input_ids": ids,
            "chosen_loss_mask": mask,
            "rejected_input_ids": ids,
            "rejected_loss_mask": mask,
        }
    )


def tokenize_chat(
    raw: Any,
    mode: str,
    tokenizer_path: Path,
    out: Path,
    num_proc: int,
    batch_size: int,
    progress: CorpusProgress,
) -> dict[str, SplitStats]:
    import datasets

    _chat_tokenizer(str(tokenizer_path))  # fail early on a tokenizer without chat tokens
    stats: dict[str, SplitStats] = {}
    results = {}
    cache = out / ".cache"
    for split, dataset in raw.splits.items():
        table = dataset.data
        nbytes = sum(text_bytes(table.column(c)) for c in text_columns(raw.kind))
        progress.start(split, len(dataset), nbytes)
        mapped = dataset.map(
            sft_batch if mode == "sft" else dpo_batch,
            batched=True,
            batch_size=batch_size,
            num_proc=workers if (workers := min(num_proc, -(-len(dataset) // batch_size))) > 1 else None,
            remove_columns=dataset.column_names,
            features=_chat_features(mode),
            fn_kwargs={"tokenizer_path": str(tokenizer_path)},
            cache_file_name=str(cache / f"{split}.arrow"),
            load_from_cache_file=False,
            desc=f"tokenizing {split}",
        )
        progress.advance(len(dataset), nbytes)
        results[split] = mapped
        tokens = int(np.asarray(mapped.with_format("numpy")["num_tokens"]).sum()) if len(mapped) else 0
        stats[split] = SplitStats(documents=len(dataset), tokens=tokens, nbytes=nbytes)
    datasets.DatasetDict(results).save_to_disk(str(out))
    shutil.rmtree(cache, ignore_errors=True)  # map's intermediate files; the saved copy is complete
    return stats
