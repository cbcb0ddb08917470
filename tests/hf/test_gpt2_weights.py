"""OpenAI's GPT-2: its tanh GELU is tfkit's gelu_tanh both ways; a checkpoint laid out as `gpt2`'s imports exactly."""

from __future__ import annotations

import json

import pytest
import torch

from tests.hf.conftest import invoke, saved_model, transformers_model
from tfkit.models.generate import generate_tokens
from tfkit.training.load import load_run

transformers = pytest.importorskip("transformers")

TANH_GELUS = ["gelu_new", "gelu_pytorch_tanh", "gelu_fast", "gelu_python_tanh", "gelu_accurate"]


def test_the_tanh_gelus_import_takes_are_tfkits_gelu_tanh():
    from transformers.activations import get_activation

    x = torch.linspace(-12, 12, 100_001)
    ours = torch.nn.functional.gelu(x, approximate="tanh")
    for name in TANH_GELUS:
        assert (get_activation(name)(x) - ours).abs().max() < 1e-6, name
    for name in ("quick_gelu", "gelu"):  # other functions: refused, or the erf GELU
        assert (get_activation(name)(x) - ours).abs().max() > 1e-4, name


def _logit_diff(theirs, run, vocab: int) -> float:
    ids = torch.randint(0, vocab, (3, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return (theirs(ids).logits - load_run(run).build().eval()(ids)).abs().max().item()


@pytest.mark.parametrize("activation", ["gelu_new", "gelu_fast"])
def test_an_openai_gpt2_checkpoint_imports_with_equal_logits(activation, tmp_path):
    theirs = transformers_model(tmp_path / "gpt2", "gpt2", activation_function=activation)
    result = invoke("import", "hf", tmp_path / "gpt2", "--out", tmp_path / "run", "--json")
    assert result.exit_code == 0, result.output
    model = json.loads(result.stdout)["model"]
    assert model["activation"] == "gelu_tanh" and model["max_seq_len"] == 1024 and model["vocab_size"] == 17
    assert model["tie_embeddings"] and model["bias"] and model["dropout"] == 0.0
    assert _logit_diff(theirs, tmp_path / "run", 17) < 1e-4
    prompt = [3, 1, 4, 1]
    with torch.no_grad():
        hf = theirs.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False, pad_token_id=16)
    ours = list(generate_tokens(load_run(tmp_path / "run").build().eval(), prompt, 12, temperature=0, stop_ids={16}))
    assert ours == hf[0, 4:].tolist()


def test_gpt2s_own_layout_imports_base_model_names_and_mask_buffers(tmp_path):
    """`gpt2`'s model.safetensors was saved from GPT2Model: no `transformer.` prefix, no lm_head, the causal
    mask as an `attn.bias` buffer of each layer; reorder_and_upcast_attn changes nothing in fp32."""
    from safetensors.torch import load_file, save_file

    theirs = transformers_model(tmp_path / "gpt2", "gpt2")
    tensors = load_file(str(tmp_path / "gpt2" / "model.safetensors"))
    bare = {k.removeprefix("transformer."): v for k, v in tensors.items() if k != "lm_head.weight"}
    for i in range(2):
        bare[f"h.{i}.attn.bias"] = torch.tril(torch.ones(1024, 1024, dtype=torch.uint8)).view(1, 1, 1024, 1024)
    save_file(bare, str(tmp_path / "gpt2" / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((tmp_path / "gpt2" / "config.json").read_text())
    (tmp_path / "gpt2" / "config.json").write_text(json.dumps({**config, "reorder_and_upcast_attn": True}))
    assert invoke("import", "hf", tmp_path / "gpt2", "--out", tmp_path / "run").exit_code == 0
    assert _logit_diff(theirs, tmp_path / "run", 17) < 1e-4
    again = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "gpt2", attn_implementation="eager").eval()
    assert again.config.reorder_and_upcast_attn and _logit_diff(again, tmp_path / "run", 17) < 1e-4


def test_import_then_export_gives_back_the_same_tensors_and_config(tmp_path):
    from safetensors.torch import load_file

    transformers_model(tmp_path / "gpt2", "gpt2")
    assert invoke("import", "hf", tmp_path / "gpt2", "--out", tmp_path / "run").exit_code == 0
    assert invoke("export", "hf", tmp_path / "run", tmp_path / "back").exit_code == 0
    before, after = (load_file(str(tmp_path / d / "model.safetensors")) for d in ("gpt2", "back"))
    assert set(before) == set(after) and all(torch.equal(before[k], after[k]) for k in before)
    config = json.loads((tmp_path / "back" / "config.json").read_text())
    assert config["activation_function"] == "gelu_new" and config["n_positions"] == 1024
    assert config["vocab_size"] == 17 and config["bos_token_id"] == config["eos_token_id"] == 16


def test_a_gelu_tanh_run_exports_as_gpt2_with_equal_logits(tmp_path):
    checkpoint = saved_model(tmp_path / "run", activation="gelu_tanh", tie_embeddings=False)
    assert invoke("export", "hf", checkpoint, tmp_path / "hf").exit_code == 0
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["activation_function"] == "gelu_new"
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    ids = torch.randint(0, 64, (3, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert (theirs(ids).logits - load_run(checkpoint).build().eval()(ids)).abs().max() < 1e-4


def test_another_activation_is_refused_naming_it(tmp_path):
    transformers_model(tmp_path / "gpt2", "gpt2", activation_function="quick_gelu")
    result = invoke("import", "hf", tmp_path / "gpt2", "--out", tmp_path / "run")
    assert result.exit_code == 2 and "activation_function 'quick_gelu'" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "run").exists()
