"""Tiny runs for the export and import tests: trained through the CLI, or built directly with every weight perturbed."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from tfkit.cli.app import app
from tfkit.config import ModelConfig, RunConfig
from tfkit.config.presets import preset_section
from tfkit.models.gpt import GPT
from tfkit.training.checkpoint import checkpoint_path, save_checkpoint

runner = CliRunner()

SWIGLU = ["--activation", "swiglu", "--no-qk-norm"]
# the exportable combinations trained through the CLI, as `tfkit train pretrain` options (the rest
# are built directly in test_export.py); the default recipe (rotary, RMSNorm, relu^2, qk-norm) is Qwen3
COMBINATIONS = {
    "default": ([], "Qwen3ForCausalLM"),
    "gpt2-tied": (["--preset", "nanogpt"], "GPT2LMHeadModel"),
    "gpt2-untied": (["--preset", "nanogpt", "--no-tie-embeddings"], "GPT2LMHeadModel"),
    "llama-untied": ([*SWIGLU, "--no-tie-embeddings"], "LlamaForCausalLM"),
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

    The block is GPT-2's (`--preset nanogpt`'s) where `model` does not say otherwise. Its config
    names the built-in process mess3 as its data, unless `tokenizer` records one.
    """
    block = {**preset_section("nanogpt", "model"), **model}
    config = ModelConfig(depth=2, width=32, num_heads=2, vocab_size=vocab_size, max_seq_len=16, **block)
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


# what OpenAI's `gpt2` config.json holds beside its shape (n_embd 768, n_layer 12, n_head 12, vocab 50257)
GPT2_CHECKPOINT = {
    "activation_function": "gelu_new",
    "attn_pdrop": 0.1,
    "embd_pdrop": 0.1,
    "resid_pdrop": 0.1,
    "layer_norm_epsilon": 1e-5,
    "initializer_range": 0.02,
    "n_ctx": 1024,
    "n_positions": 1024,
    "summary_activation": None,
    "summary_first_dropout": 0.1,
    "summary_proj_to_labels": True,
    "summary_type": "cls_index",
    "summary_use_proj": True,
    "task_specific_params": {"text-generation": {"do_sample": True, "max_length": 50}},
}


# what Llama 3.2, SmolLM and TinyLlama checkpoints carry beside their shape: fewer key/value heads than
# query heads, rms_norm_eps 1e-5 and (Llama 3.1 on) llama3 rope scaling; with original_max_position_embeddings
# 64 the head size 8's wavelengths 6.3, 63 and 630+ fall in the scaling's three bands (kept, smoothed, divided)
LLAMA3_SCALING = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 64,
}
LLAMA_GQA = {
    "num_attention_heads": 4,
    "num_key_value_heads": 1,
    "rms_norm_eps": 1e-5,
    "max_position_embeddings": 128,
    "rope_scaling": LLAMA3_SCALING,
}
# the same with two key/value heads and linear scaling, given as transformers 5.x's rope_parameters
LLAMA_LINEAR = {
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "rms_norm_eps": 1e-5,
    "rope_parameters": {"rope_type": "linear", "factor": 4.0, "rope_theta": 500.0},
}


def word_tokenizer(path: Path, words: int) -> Path:
    """A word-level tokenizer.json: "w0" .. "w{words-1}" are ids 0 .. words-1, then <|endoftext|> (last, as GPT-2's)."""
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers

    from tfkit.tokenizer.train import EOT

    tokenizer = Tokenizer(models.WordLevel({f"w{i}": i for i in range(words)}, unk_token=None))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.add_special_tokens([AddedToken(EOT, special=True)])
    path.parent.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(path))
    return path


def gpt2_tokenizer(path: Path, texts: list[str], vocab_size: int = 300) -> Path:
    """A byte-level BPE tokenizer.json built as OpenAI's GPT-2 one is: the 256 byte symbols and the merges learned
    on `texts`, ByteLevel pre-tokenizer, post-processor and decoder, and <|endoftext|> its one special token, last."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    from tfkit.tokenizer.train import EOT

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - 1, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tokenizer.train_from_iterator(texts, trainer)
    tokenizer.add_special_tokens([AddedToken(EOT, special=True, normalized=True)])  # as GPT-2's: normalized
    path.parent.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(path))
    return path


def transformers_model(
    folder: Path, kind: str, words: int = 16, seed: int = 0, tokenizer: Path | None = None, **config
):
    """A tiny random transformers GPT-2 (OpenAI's config but its shape) or Llama, every weight moved off its init,
    saved with `save_pretrained` beside a word-level tokenizer.json of `words` words and <|endoftext|>, or a copy
    of `tokenizer` (`words` ids, then <|endoftext|>)."""
    import transformers

    vocab = words + 1  # odd, as GPT-2's 50257
    if kind == "gpt2":
        settings = {**GPT2_CHECKPOINT, "n_embd": 32, "n_layer": 2, "n_head": 2, "vocab_size": vocab}
        settings |= {"bos_token_id": words, "eos_token_id": words, **config}
        model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**settings))
    else:
        settings = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}
        settings |= {"num_key_value_heads": 2, "max_position_embeddings": 64, "vocab_size": vocab, **config}
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**settings))
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(folder)
    if tokenizer is None:
        word_tokenizer(folder / "tokenizer.json", words)
    else:
        (folder / "tokenizer.json").write_bytes(tokenizer.read_bytes())
    return model.eval()
