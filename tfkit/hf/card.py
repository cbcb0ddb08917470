"""The model card (README.md) of an exported model: what it is, how it was trained, how it did."""

from __future__ import annotations

import json
from typing import Any

from tfkit.config import ModelConfig

METRICS = ("val_loss", "val_acc", "val_pplx", "optimal_loss", "excess_loss")
TRAINING = ("step", "tokens_seen", "epoch", "status")


def model_card(
    arch: str,
    config: ModelConfig,
    *,
    run: dict[str, Any] | None,
    summary: dict[str, Any] | None,
    source: str,
    tokenizer: str,
) -> str:
    """README.md text for an exported model.

    Args:
        run: the run's train_config.json (None when the checkpoint has no run directory).
        summary: the run's summary.json (None when absent or unreadable).
        source: the checkpoint exported.
        tokenizer: where the tokenizer came from, in words.
    """
    meta = (run or {}).get("meta", {})
    data = (run or {}).get("data", {})
    lines = [
        "---",
        "library_name: transformers",
        "tags:",
        "- tfkit",
        "---",
        "",
        f"# {arch} exported from tfkit",
        "",
        f"Exported by `tfkit export hf` from `{source}`. It loads with no custom code:",
        "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "model = AutoModelForCausalLM.from_pretrained(PATH)",
        "tokenizer = AutoTokenizer.from_pretrained(PATH)",
        "```",
        "",
        f"Tokenizer: {tokenizer}.",
        "",
        "## Model",
        "",
        "| option | value |",
        "| --- | --- |",
    ]
    for name, value in config.__dict__.items():
        if name in ("model_scale", "scale_base_depth", "scale_base_width"):
            continue
        lines.append(f"| {name} | {value} |")
    lines += ["", "## Training", ""]
    if data:
        lines.append(f"- data: {meta.get('data_source') or data.get('data')}")
        lines.append(f"- seq_len: {data.get('seq_len')}, batch_size: {data.get('batch_size')}")
    for name in TRAINING:
        if summary and name in summary:
            lines.append(f"- {name}: {summary[name]}")
    if not data and not summary:
        lines.append("- no train_config.json or summary.json beside the checkpoint")
    metrics = [(name, summary[name]) for name in METRICS if summary and summary.get(name) is not None]
    if metrics:
        lines += ["", "## Final metrics", "", "| metric | value |", "| --- | --- |"]
        lines += [f"| {name} | {value:.6g} |" for name, value in metrics]
    if run:
        lines += [
            "",
            "## Run config",
            "",
            "```json",
            json.dumps({k: v for k, v in run.items() if k != "meta"}, indent=2),
            "```",
        ]
    return "\n".join(lines) + "\n"
