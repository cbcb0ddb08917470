"""Tiny runs for the export and import tests: trained through the CLI, or built directly with every weight perturbed."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from tfkit.cli.app import app
from tfkit.config import ModelConfig, RunConfig
from tfkit.models.gpt import GPT
from tfkit.training.checkpoint import checkpoint_path, save_checkpoint

runner = CliRunner()

MODERN = ["--positions", "rotary", "--norm", "rmsnorm", "--activation", "swiglu"]
# the exportable combinations trained through the CLI, as `tfkit train pretrain` options (Qwen3 and
# the rest are built directly in test_export.py)
COMBINATIONS = {
    "gpt2-tied": ([], "GPT2LMHeadModel"),
    "gpt2-untied": (["--no-tie-embeddings"], "GPT2LMHeadModel"),
    "llama-untied": ([*MODERN, "--no-tie-embeddings"], "LlamaForCausalLM"),
}
TRAIN = (
    "--data mess3 --depth 2 --width 32 --num-heads 2 --seq-len 16 --batch-size 8 --max-steps 5 --device cpu -q "
    "--set data.train_sequences=256 --set data.val_examples=64"
)


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """name -> a run directory trained for 5 steps through `tfkit train pretrain` (each trained once)."""
    runs: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in runs:
            out = tmp_path_factory.mktemp("runs") / name
            result = invoke("train", "pretrain", *TRAIN.split(), *COMBINATIONS[name][0], "--out", out)
            assert result.exit_code == 0, result.output
            runs[name] = out
        return runs[name]

    return get


def saved_model(folder: Path, vocab_size: int = 64, tokenizer: dict | None = None, **model) -> Path:
    """A checkpoint of a GPT built directly, every weight (biases, norm gains) moved off its init.

    Its config names the built-in process mess3 as its data, unless `tokenizer` records one.
    """
    config = ModelConfig(depth=2, width=32, num_heads=2, vocab_size=vocab_size, max_seq_len=16, **model)
    torch.manual_seed(0)
    gpt = GPT(config)
    with torch.no_grad():
        for p in gpt.parameters():
            p.add_(0.1 * torch.randn_like(p))
    state = {
        "model": gpt.state_dict(),
        "config": {"model": RunConfig.from_dict({"model": vars(config)}).to_dict()["model"], "data": {"data": "mess3"}},
    }
    if tokenizer is not None:
        state["tokenizer"] = tokenizer
    path = checkpoint_path(folder, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(path, state)
    return path
