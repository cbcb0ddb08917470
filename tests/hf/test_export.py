"""`tfkit export hf`: the exported model computes in transformers exactly what tfkit computes, or is refused."""

from __future__ import annotations

import json

import pytest
import torch

from tests.hf.conftest import COMBINATIONS, LLAMA3_SCALING, invoke, saved_model
from tfkit.models.generate import generate_tokens
from tfkit.tokenizer.train import ASSISTANT, END, EOT, SYSTEM, USER
from tfkit.training.load import load_run

transformers = pytest.importorskip("transformers")


# grouped-query attention (2 heads share 1 key/value head), RMSNorm eps 1e-5
LLAMA_GQA = {"positions": "rotary", "norm": "rmsnorm", "activation": "swiglu", "num_kv_heads": 1, "norm_eps": 1e-5}
# relu^2 is the gated MLP relu(gate) * up with gate = up
RELU2 = {"positions": "rotary", "norm": "rmsnorm", "activation": "relu2"}


def _ids(vocab: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab, (3, 16), generator=torch.Generator().manual_seed(seed))  # (B, T)


def check_equal(run, out) -> float:
    """Logits on the same ids equal (max abs diff < 1e-4) and greedy generation gives the same tokens."""
    ours = load_run(run).build().eval()
    theirs = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    ids = _ids(ours.config.vocab_size)
    with torch.no_grad():
        diff = (theirs(ids).logits - ours(ids)).abs().max().item()
        assert diff < 1e-4
        prompt = ids[0, :4]
        mask = torch.ones(1, 4, dtype=torch.long)  # explicit: else ids equal to pad_token_id would be masked
        hf_new = theirs.generate(prompt[None], attention_mask=mask, max_new_tokens=10, do_sample=False, pad_token_id=0)
    hf_new = hf_new[0, 4:].tolist()
    assert list(generate_tokens(ours, prompt.tolist(), 10, temperature=0)) == hf_new
    return diff


@pytest.mark.parametrize("name", list(COMBINATIONS))
def test_trained_runs_export_to_models_transformers_computes_equally(name, trained, tmp_path):
    out = tmp_path / "hf"
    result = invoke("export", "hf", trained(name), out, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["architecture"] == COMBINATIONS[name][1]
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == [COMBINATIONS[name][1]]
    assert config["tie_word_embeddings"] == ("untied" not in name)
    check_equal(trained(name), out)
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    assert tokenizer("0 2 1 1").input_ids == [0, 2, 1, 1] and tokenizer.decode([2, 0]) == "2 0"
    card = (out / "README.md").read_text()
    assert COMBINATIONS[name][1] in card and "val_loss" in card and "mess3" in card


@pytest.mark.parametrize(
    "model",
    [
        {"bias": True},
        {"activation": "relu"},
        {"activation": "relu2", "tie_embeddings": False},
        {"positions": "rotary", "norm": "rmsnorm", "activation": "swiglu", "bias": True},
        {"positions": "rotary", "norm": "rmsnorm", "activation": "swiglu", "qk_norm": True, "rope_base": 500.0},
        {**LLAMA_GQA, "bias": True, "rope_scaling": {**LLAMA3_SCALING, "original_max_position_embeddings": 8}},
        {**LLAMA_GQA, "qk_norm": True, "rope_scaling": {"rope_type": "linear", "factor": 2.0}},
        {**RELU2, "qk_norm": True, "mlp_ratio": 3.0},
        {**RELU2, "bias": True, "tie_embeddings": False},
    ],
    ids=[
        "gpt2-bias",
        "gpt2-relu",
        "gpt2-relu2",
        "llama-bias",
        "qwen3-rope-base",
        "llama-gqa-llama3",
        "qwen3-gqa-linear",
        "qwen3-relu2",
        "llama-relu2-bias",
    ],
)
def test_every_weight_lands_where_transformers_reads_it(model, tmp_path):
    """Models with every weight, bias and gain perturbed, so a misplaced tensor cannot hide at its init value."""
    checkpoint = saved_model(tmp_path / "run", **model)
    result = invoke("export", "hf", checkpoint, tmp_path / "hf")
    assert result.exit_code == 0, result.output
    check_equal(checkpoint, tmp_path / "hf")


def _bpe_tokenizer(path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(vocab_size=60, special_tokens=[EOT, SYSTEM, USER, ASSISTANT, END])
    tokenizer.train_from_iterator(["the cat sat on the mat", "a dog ran to the cat"] * 20, trainer)
    tokenizer.save(str(path))


def test_the_runs_tokenizer_goes_with_its_special_tokens(tmp_path):
    from tfkit.tokenizer.train import load_tokenizer, tokenizer_sha256

    path = tmp_path / "tokenizer.json"
    _bpe_tokenizer(path)
    record = {"tokenizer_path": str(path), "tokenizer_sha256": tokenizer_sha256(path)}
    checkpoint = saved_model(tmp_path / "run", tokenizer=record)
    assert invoke("export", "hf", checkpoint, tmp_path / "hf").exit_code == 0
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    ours = load_tokenizer(path)
    assert theirs.eos_token == EOT and theirs.eos_token_id == ours.token_to_id(EOT)
    assert set(theirs.all_special_tokens) >= {EOT, SYSTEM, USER, ASSISTANT, END}
    text = "the cat ran on the mat"
    assert theirs(text).input_ids == ours.encode(text).ids
    assert transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").config.eos_token_id == ours.token_to_id(
        EOT
    )


ROTARY = {"positions": "rotary", "norm": "rmsnorm", "activation": "swiglu"}


@pytest.mark.parametrize(
    ("model", "option"),
    [
        ({"block": "parallel"}, "--block parallel"),
        ({"mixer": "ssm"}, "--mixer ssm"),
        ({"norm": "rmsnorm"}, "--norm rmsnorm"),
        ({"activation": "swiglu"}, "--activation swiglu"),
        ({"qk_norm": True}, "--qk-norm"),
        ({**ROTARY, "norm": "layernorm"}, "--norm layernorm"),
        ({**ROTARY, "activation": "gelu"}, "--activation gelu"),
        ({**ROTARY, "qk_norm": True, "bias": True}, "model.bias"),
        ({"num_kv_heads": 1}, "--num-kv-heads 1"),
        ({**ROTARY, "x0_mix": True}, "--x0-mix"),
    ],
)
def test_a_model_no_architecture_holds_is_refused_naming_its_option(model, option, tmp_path):
    checkpoint = saved_model(tmp_path / "run", **model)
    result = invoke("export", "hf", checkpoint, tmp_path / "hf")
    assert result.exit_code == 2
    assert option in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.output and not (tmp_path / "hf").exists()


def test_an_in_context_regression_run_is_refused(tmp_path):
    checkpoint = saved_model(tmp_path / "run")
    state = torch.load(checkpoint, weights_only=True)
    state["config"]["task"] = {"kind": "linear"}
    from tfkit.training.checkpoint import save_checkpoint

    save_checkpoint(checkpoint, state)
    result = invoke("export", "hf", checkpoint, tmp_path / "hf")
    assert result.exit_code == 2 and "not a GPT language model" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_full_out_dir_is_kept_unless_overwrite(tmp_path):
    checkpoint = saved_model(tmp_path / "run")
    out = tmp_path / "hf"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    result = invoke("export", "hf", checkpoint, out)
    assert result.exit_code == 2 and "--overwrite" in result.stderr and (out / "mine.txt").exists()
    assert invoke("export", "hf", checkpoint, out, "--overwrite").exit_code == 0
    assert not (out / "mine.txt").exists() and (out / "model.safetensors").is_file()
