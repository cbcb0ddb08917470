"""`tfkit import hf`: a transformers folder becomes a run that `generate --run` and `--init` take, or is refused."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from tests.hf.conftest import COMBINATIONS, invoke, saved_model
from tfkit.training.load import load_run

pytest.importorskip("transformers")

QWEN3 = {"positions": "rotary", "norm": "rmsnorm", "activation": "swiglu", "qk_norm": True}


@pytest.mark.parametrize("name", list(COMBINATIONS))
def test_import_of_export_gives_the_same_model(name, trained, tmp_path):
    run = trained(name)
    assert invoke("export", "hf", run, tmp_path / "hf").exit_code == 0
    result = invoke("import", "hf", tmp_path / "hf", "--out", tmp_path / "back", "--json")
    assert result.exit_code == 0, result.output
    before, after = load_run(run), load_run(tmp_path / "back", "--init")  # what --init and generate call
    # zero GPT-2 biases come back as no biases; the recipe's name (--preset) is no part of the model
    assert after.model_config == dataclasses.replace(before.model_config, preset=None)
    ids = torch.randint(0, 3, (3, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(after.build().eval()(ids), before.build().eval()(ids))
    assert (tmp_path / "back" / "checkpoints" / "latest").read_text().strip() == "0.pt"
    assert (tmp_path / "back" / "checkpoints" / "0.pt.sha256").is_file()


def test_generate_runs_on_an_imported_run(tmp_path):
    checkpoint = saved_model(tmp_path / "run", vocab_size=5, **QWEN3)
    assert invoke("export", "hf", checkpoint, tmp_path / "hf").exit_code == 0
    assert invoke("import", "hf", tmp_path / "hf", "--out", tmp_path / "back").exit_code == 0
    result = invoke("generate", "--run", tmp_path / "back", "--prompt", "0 4 2", "--temperature", "0", "--json")
    assert result.exit_code == 0, result.output
    reply = json.loads(result.stdout)
    from tfkit.models.generate import generate_tokens

    expected = list(generate_tokens(load_run(checkpoint).build().eval(), [0, 4, 2], 100, temperature=0))
    assert reply["token_ids"] == expected and reply["text"].split() == [str(i) for i in expected]


def test_a_relu2_export_imports_back_as_relu2(tmp_path):
    checkpoint = saved_model(tmp_path / "run", **{**QWEN3, "activation": "relu2"})
    assert invoke("export", "hf", checkpoint, tmp_path / "hf").exit_code == 0
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["hidden_act"] == "relu" and config["intermediate_size"] == 4 * 32
    assert invoke("import", "hf", tmp_path / "hf", "--out", tmp_path / "back").exit_code == 0
    before, after = load_run(checkpoint), load_run(tmp_path / "back")
    assert after.model_config == before.model_config
    ids = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.equal(after.build().eval()(ids), before.build().eval()(ids))


def _exported(tmp_path, **model):
    checkpoint = saved_model(tmp_path / "run", **model)
    assert invoke("export", "hf", checkpoint, tmp_path / "hf").exit_code == 0
    return tmp_path / "hf"


LLAMA = {"positions": "rotary", "norm": "rmsnorm", "activation": "swiglu"}


@pytest.mark.parametrize(
    ("model", "change", "option"),
    [
        (LLAMA, {"num_key_value_heads": 3}, "num_key_value_heads"),
        (LLAMA, {"rope_parameters": {"rope_type": "yarn", "factor": 2.0, "rope_theta": 1e4}}, "rope_scaling"),
        (LLAMA, {"rope_scaling": {"rope_type": "dynamic", "factor": 2.0}}, "rope_scaling"),
        (LLAMA, {"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, "rope_scaling"),
        (LLAMA, {"partial_rotary_factor": 0.5}, "partial_rotary_factor"),
        (LLAMA, {"hidden_act": "gelu"}, "hidden_act"),
        (LLAMA, {"hidden_act": "relu"}, "hidden_act"),  # relu with gate_proj != up_proj: no relu^2
        (LLAMA, {"mlp_bias": True}, "mlp_bias"),
        (LLAMA, {"model_type": "mistral"}, "model_type"),
        ({}, {"activation_function": "gelu_10"}, "activation_function"),
        ({}, {"layer_norm_epsilon": 1e-6}, "layer_norm_epsilon"),
        ({}, {"scale_attn_by_inverse_layer_idx": True}, "scale_attn_by_inverse_layer_idx"),
    ],
)
def test_an_option_tfkit_cannot_express_is_refused_naming_it(model, change, option, tmp_path):
    folder = _exported(tmp_path, **model)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **change}))
    result = invoke("import", "hf", folder, "--out", tmp_path / "back")
    assert result.exit_code == 2
    assert option in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.output and not (tmp_path / "back").exists()


@pytest.mark.parametrize("missing", ["tokenizer.json", "model.safetensors", "config.json"])
def test_a_folder_missing_a_file_is_refused(missing, tmp_path):
    folder = _exported(tmp_path)
    (folder / missing).unlink()
    result = invoke("import", "hf", folder, "--out", tmp_path / "back")
    assert result.exit_code == 2 and missing in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "back").exists()


def test_sharded_safetensors_are_read(tmp_path):
    from safetensors.torch import load_file, save_file

    folder = _exported(tmp_path, **LLAMA)
    tensors = load_file(str(folder / "model.safetensors"))
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for file, part in shards.items():
        save_file({k: tensors[k] for k in part}, str(folder / file), metadata={"format": "pt"})
    weight_map = {k: file for file, part in shards.items() for k in part}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    (folder / "model.safetensors").unlink()
    assert invoke("import", "hf", folder, "--out", tmp_path / "back").exit_code == 0
    ids = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ours = load_run(tmp_path / "run" / "checkpoints" / "0.pt").build().eval()(ids)
        assert torch.equal(load_run(tmp_path / "back").build().eval()(ids), ours)


# Llama 3.2 1B's config.json, shape aside, without its rope fields (`ROPE`: in each form they take)
LLAMA32 = {
    "model_type": "llama",
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 8,
    "num_key_value_heads": 2,
    "head_dim": 8,
    "max_position_embeddings": 131072,
    "vocab_size": 100,
    "hidden_act": "silu",
    "rms_norm_eps": 1e-05,
    "tie_word_embeddings": True,
}
SCALING = {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0, "original_max_position_embeddings": 8192}
ROPE = {
    # as transformers 4.x writes it (Llama 3.2's own config.json): rope_scaling beside rope_theta
    "4.x": {"rope_theta": 5e5, "rope_scaling": {**SCALING, "rope_type": "llama3"}},
    # transformers 5.x: the scaling and the theta in rope_parameters
    "5.x": {"rope_parameters": {**SCALING, "rope_type": "llama3", "rope_theta": 5e5}},
    # the older `type`; rope_scaling comes before rope_parameters, as transformers 5.x reads them
    "type": {
        "rope_theta": 5e5,
        "rope_scaling": {**SCALING, "type": "llama3"},
        "rope_parameters": {"rope_type": "default", "rope_theta": 5e5},
    },
}


@pytest.mark.parametrize("form", list(ROPE))
def test_llama3_configs_map_to_grouped_query_attention_with_scaled_rotary(form):
    from tfkit.hf.import_ import model_config_of

    config = model_config_of({**LLAMA32, **ROPE[form]}, {})
    assert (config.num_heads, config.num_kv_heads, config.norm_eps, config.rope_base) == (8, 2, 1e-5, 5e5)
    assert config.rope_scaling == {"rope_type": "llama3", **SCALING}
    # as transformers does, a llama3 scaling without its original context takes max_position_embeddings
    short = {**LLAMA32, "rope_parameters": {**SCALING, "rope_type": "llama3"}}
    del short["rope_parameters"]["original_max_position_embeddings"]
    assert model_config_of(short, {}).rope_scaling["original_max_position_embeddings"] == 131072
