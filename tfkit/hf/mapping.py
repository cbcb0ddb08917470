"""Which transformers architecture a tfkit model is, and its weights renamed both ways.

Three architectures hold a tfkit GPT exactly, with no custom code:

- `GPT2LMHeadModel`: the classic block, sequential, learned positions, LayerNorm (eps
  1e-5 in both), activation gelu (exact erf GELU, transformers' "gelu"), gelu_tanh (the
  tanh approximation of OpenAI's GPT-2 weights, transformers' "gelu_new"), relu or relu2.
  GPT-2's Conv1D stores weights as (in, out), the transpose of nn.Linear's (out, in).
  GPT-2 always has biases: a model without them gets zero biases, which add nothing.
- `LlamaForCausalLM`: the modern block, sequential, rotary, RMSNorm (`model.norm_eps` is
  `rms_norm_eps`), SwiGLU or relu^2. tfkit's rotary pairs dimension i with i + hs/2 (the half split),
  which is transformers' `rotate_half`, with the same frequencies (`rope_base` is
  `rope_theta`, `model.rope_scaling` its linear or llama3 `rope_scaling`): q and k need no
  permutation. `--num-kv-heads` is `num_key_value_heads`: c_attn holds q, then k, then v,
  and tfkit's key/value head j serves the query heads transformers' `repeat_kv` gives it.
  tfkit's c_fc yields [value, gate]: value is Llama's up_proj, gate its gate_proj.
  relu^2 is Llama's gated MLP with `hidden_act` relu and gate_proj equal to up_proj, since
  relu(a) * a = relu(a)^2 for every a: c_fc is written twice, and computes exactly what it
  does in tfkit (the file holds the MLP's input matrix twice).
  Biases (`model.bias`) become `attention_bias` and `mlp_bias`.
- `Qwen3ForCausalLM`: the same with --qk-norm (RMSNorm over the head dimension of q and
  k, before rotary, in both), without biases.

Anything else is refused with a `ConfigError` naming the option, never written wrong.
"""

from __future__ import annotations

from typing import Any

import torch

from tfkit.config import ModelConfig, mlp_hidden_size
from tfkit.errors import ConfigError
from tfkit.models.gpt import GPT

LAYERNORM_EPS = 1e-5  # torch's nn.LayerNorm default, which tfkit's make_norm keeps
# tfkit -> transformers' ACT2FN name; gelu_tanh as "gelu_new", the name GPT-2's own config uses
GPT2_ACTIVATIONS = {"gelu": "gelu", "gelu_tanh": "gelu_new", "relu": "relu", "relu2": "relu2"}
# transformers' ACT2FN name -> tfkit, for import: the names whose function is tfkit's. The tanh GELU
# 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) is computed by F.gelu(approximate="tanh")
# (gelu_pytorch_tanh) and written out in torch ops by gelu_new, gelu_python_tanh, gelu_accurate and
# gelu_fast (which factors out x and writes sqrt(2/pi) as 0.7978845608, the same float32); they
# differ by rounding alone (below 1e-6). quick_gelu (x sigmoid(1.702 x)) and gelu_10 (clipped) are
# other functions and are refused.
GPT2_IMPORTS = {
    "gelu": "gelu",
    "relu": "relu",
    "relu2": "relu2",
    **dict.fromkeys(("gelu_new", "gelu_pytorch_tanh", "gelu_python_tanh", "gelu_accurate", "gelu_fast"), "gelu_tanh"),
}

# tfkit -> the `hidden_act` of Llama's and Qwen3's gated MLP act(gate) * up: relu2 is relu with gate = up
LLAMA_ACTIVATIONS = {"swiglu": "silu", "relu2": "relu"}


def architecture(config: ModelConfig) -> str:
    """The transformers class that holds `config` exactly, or a `ConfigError` naming the option it cannot."""
    if config.block != "sequential":
        raise ConfigError(f"--block {config.block} has no transformers architecture; export takes --block sequential")
    if config.x0_mix:
        raise ConfigError("--x0-mix has no transformers architecture; export takes --no-x0-mix")
    if config.mixer != "attention":
        raise ConfigError(f"--mixer {config.mixer} has no transformers architecture; export takes --mixer attention")
    if config.positions == "learned":
        if config.norm != "layernorm":
            raise ConfigError(f"--norm {config.norm} with --positions learned has no transformers architecture")
        if config.activation not in GPT2_ACTIVATIONS:
            raise ConfigError(
                f"--activation {config.activation} with --positions learned has no transformers architecture "
                f"(GPT-2 takes {', '.join(GPT2_ACTIVATIONS)})"
            )
        if config.qk_norm:
            raise ConfigError("--qk-norm with --positions learned has no transformers architecture")
        if config.kv_heads != config.num_heads:
            raise ConfigError(
                f"--num-kv-heads {config.kv_heads} with --positions learned has no transformers architecture "
                f"(GPT-2 has one key/value head per query head, {config.num_heads})"
            )
        return "GPT2LMHeadModel"
    if config.norm != "rmsnorm":
        raise ConfigError(f"--norm {config.norm} with --positions rotary has no transformers architecture")
    if config.activation not in LLAMA_ACTIVATIONS:
        raise ConfigError(
            f"--activation {config.activation} with --positions rotary has no transformers architecture "
            f"(Llama takes {' or '.join(LLAMA_ACTIVATIONS)})"
        )
    if config.qk_norm:
        if config.bias:
            raise ConfigError("model.bias with --qk-norm has no transformers architecture (Qwen3's MLP has no biases)")
        return "Qwen3ForCausalLM"
    return "LlamaForCausalLM"


def _clean(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Contiguous float32 copies that share no storage (safetensors refuses shared tensors)."""
    return {k: v.detach().to(torch.float32).contiguous().clone() for k, v in tensors.items()}


def to_hf(config: ModelConfig, state: dict[str, torch.Tensor]) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(config.json contents, safetensors tensors) of a tfkit GPT's config and state dict."""
    arch = architecture(config)
    if arch == "GPT2LMHeadModel":
        return _gpt2_config(config), _clean(_gpt2_tensors(config, state))
    return _llama_config(config, arch), _clean(_llama_tensors(config, state, arch))


def _gpt2_config(config: ModelConfig) -> dict[str, Any]:
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": config.vocab_size,
        "n_positions": config.max_seq_len,
        "n_embd": config.width,
        "n_layer": config.depth,
        "n_head": config.num_heads,
        "n_inner": mlp_hidden_size(config),
        "activation_function": GPT2_ACTIVATIONS[config.activation],
        "layer_norm_epsilon": LAYERNORM_EPS,
        # tfkit's dropout acts on attention weights and residual branches, as GPT-2's attn and resid dropout do
        "attn_pdrop": config.dropout,
        "resid_pdrop": config.dropout,
        "embd_pdrop": 0.0,
        "initializer_range": config.init_std,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "tie_word_embeddings": config.tie_embeddings,
        "dtype": "float32",
    }


def _llama_config(config: ModelConfig, arch: str) -> dict[str, Any]:
    scaling = rope_scaling_json(config)
    out = {
        "architectures": [arch],
        "model_type": "qwen3" if arch == "Qwen3ForCausalLM" else "llama",
        "vocab_size": config.vocab_size,
        "max_position_embeddings": config.max_seq_len,
        "hidden_size": config.width,
        "intermediate_size": mlp_hidden_size(config),
        "num_hidden_layers": config.depth,
        "num_attention_heads": config.num_heads,
        "num_key_value_heads": config.kv_heads,
        "head_dim": config.width // config.num_heads,
        "hidden_act": LLAMA_ACTIVATIONS[config.activation],
        "rms_norm_eps": config.norm_eps,
        "rope_theta": config.rope_base,  # read by transformers 4.x
        "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_base, **(scaling or {})},  # and by 5.x
        "attention_bias": config.bias,
        # Llama has dropout on attention weights only; tfkit's residual dropout has no place (both off at eval)
        "attention_dropout": config.dropout,
        "initializer_range": config.init_std,
        "tie_word_embeddings": config.tie_embeddings,
        "dtype": "float32",
    }
    if scaling is not None:
        out["rope_scaling"] = scaling  # transformers 4.x reads it beside rope_theta; 5.x takes it first
    if arch == "LlamaForCausalLM":
        out["mlp_bias"] = config.bias
    else:
        out["use_sliding_window"] = False
    return out


def rope_scaling_json(config: ModelConfig) -> dict[str, Any] | None:
    """`model.rope_scaling` as transformers writes it (original_max_position_embeddings an integer), or None."""
    if config.rope_scaling is None:
        return None
    scaling = dict(config.rope_scaling)
    if "original_max_position_embeddings" in scaling:
        scaling["original_max_position_embeddings"] = int(scaling["original_max_position_embeddings"])
    return scaling


def _gpt2_tensors(config: ModelConfig, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    C = config.width

    def bias(key: str, size: int) -> torch.Tensor:
        return state[key] if key in state else torch.zeros(size)

    out = {
        "transformer.wte.weight": state["transformer.wte.weight"],
        "transformer.wpe.weight": state["transformer.wpe.weight"],
    }
    for i in range(config.depth):
        t, h = f"transformer.h.{i}.", f"transformer.h.{i}."
        for norm in ("ln_1", "ln_2"):
            out[h + f"{norm}.weight"] = state[t + f"{norm}.weight"]
            out[h + f"{norm}.bias"] = bias(t + f"{norm}.bias", C)
        for linear in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"):
            weight = state[t + f"{linear}.weight"]  # (out, in)
            out[h + f"{linear}.weight"] = weight.t()  # Conv1D: (in, out)
            out[h + f"{linear}.bias"] = bias(t + f"{linear}.bias", weight.size(0))
    out["transformer.ln_f.weight"] = state["transformer.ln_f.weight"]
    out["transformer.ln_f.bias"] = bias("transformer.ln_f.bias", C)
    if not config.tie_embeddings:
        out["lm_head.weight"] = state["lm_head.weight"]
    return out


def _llama_tensors(config: ModelConfig, state: dict[str, torch.Tensor], arch: str) -> dict[str, torch.Tensor]:
    C, hidden = config.width, mlp_hidden_size(config)
    kv = config.kv_heads * (C // config.num_heads)  # the width of k and of v
    out = {
        "model.embed_tokens.weight": state["transformer.wte.weight"],
        "model.norm.weight": state["transformer.ln_f.weight"],
    }
    suffixes = ("weight", "bias") if config.bias else ("weight",)
    for i in range(config.depth):
        t, h = f"transformer.h.{i}.", f"model.layers.{i}."
        out[h + "input_layernorm.weight"] = state[t + "ln_1.weight"]
        out[h + "post_attention_layernorm.weight"] = state[t + "ln_2.weight"]
        for s in suffixes:
            q, k, v = state[t + f"attn.c_attn.{s}"].split([C, kv, kv], dim=0)
            out |= {h + f"self_attn.q_proj.{s}": q, h + f"self_attn.k_proj.{s}": k, h + f"self_attn.v_proj.{s}": v}
            out[h + f"self_attn.o_proj.{s}"] = state[t + f"attn.c_proj.{s}"]
            fc = state[t + f"mlp.c_fc.{s}"]
            up, gate = fc.split(hidden, dim=0) if config.activation == "swiglu" else (fc, fc)  # swiglu: [value, gate]
            out |= {h + f"mlp.up_proj.{s}": up, h + f"mlp.gate_proj.{s}": gate}
            out[h + f"mlp.down_proj.{s}"] = state[t + f"mlp.c_proj.{s}"]
        if arch == "Qwen3ForCausalLM":
            out[h + "self_attn.q_norm.weight"] = state[t + "attn.attn.q_norm.weight"]
            out[h + "self_attn.k_norm.weight"] = state[t + "attn.attn.k_norm.weight"]
    if not config.tie_embeddings:
        out["lm_head.weight"] = state["lm_head.weight"]
    return out


def from_hf_tensors(config: ModelConfig, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A tfkit state dict for `config` from a transformers model's tensors (names as `to_hf` writes them).

    The inverse of `to_hf`: `config` is what `tfkit.hf.import_.model_config_of` read from
    the model's config.json. A missing tensor raises `KeyError` naming it.
    """
    arch = architecture(config)
    prefix = "transformer." if arch == "GPT2LMHeadModel" else "model."
    # checkpoints saved from the base model (GPT2Model, LlamaModel) have no prefix
    if not any(k.startswith(prefix) for k in tensors):
        tensors = {prefix + k if k != "lm_head.weight" else k: v for k, v in tensors.items()}
    wanted = to_hf(config, _template(config))[1]  # the names and shapes to_hf would write
    for name, like in wanted.items():
        if name not in tensors:
            raise KeyError(name)
        if tuple(tensors[name].shape) != tuple(like.shape):
            raise ValueError(f"{name} has shape {tuple(tensors[name].shape)}, expected {tuple(like.shape)}")
    t = {k: tensors[k].to(torch.float32) for k in wanted}
    state: dict[str, torch.Tensor] = {}
    if arch == "GPT2LMHeadModel":
        state["transformer.wte.weight"] = t["transformer.wte.weight"]
        state["transformer.wpe.weight"] = t["transformer.wpe.weight"]
        for i in range(config.depth):
            p = f"transformer.h.{i}."
            for norm in ("ln_1", "ln_2"):
                state[p + f"{norm}.weight"] = t[p + f"{norm}.weight"]
                if config.bias:
                    state[p + f"{norm}.bias"] = t[p + f"{norm}.bias"]
            for linear in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"):
                state[p + f"{linear}.weight"] = t[p + f"{linear}.weight"].t()
                if config.bias:
                    state[p + f"{linear}.bias"] = t[p + f"{linear}.bias"]
        state["transformer.ln_f.weight"] = t["transformer.ln_f.weight"]
        if config.bias:
            state["transformer.ln_f.bias"] = t["transformer.ln_f.bias"]
    else:
        state["transformer.wte.weight"] = t["model.embed_tokens.weight"]
        state["transformer.ln_f.weight"] = t["model.norm.weight"]
        for i in range(config.depth):
            p, h = f"transformer.h.{i}.", f"model.layers.{i}."
            state[p + "ln_1.weight"] = t[h + "input_layernorm.weight"]
            state[p + "ln_2.weight"] = t[h + "post_attention_layernorm.weight"]
            for s in ("weight", "bias") if config.bias else ("weight",):
                qkv = [t[h + f"self_attn.{n}_proj.{s}"] for n in "qkv"]
                state[p + f"attn.c_attn.{s}"] = torch.cat(qkv, dim=0)
                state[p + f"attn.c_proj.{s}"] = t[h + f"self_attn.o_proj.{s}"]
                up, gate = t[h + f"mlp.up_proj.{s}"], t[h + f"mlp.gate_proj.{s}"]
                state[p + f"mlp.c_fc.{s}"] = torch.cat([up, gate], dim=0) if config.activation == "swiglu" else up
                state[p + f"mlp.c_proj.{s}"] = t[h + f"mlp.down_proj.{s}"]
            if arch == "Qwen3ForCausalLM":
                state[p + "attn.attn.q_norm.weight"] = t[h + "self_attn.q_norm.weight"]
                state[p + "attn.attn.k_norm.weight"] = t[h + "self_attn.k_norm.weight"]
    # tied: one matrix for both, as GPT's state dict holds it under both names
    state["lm_head.weight"] = state["transformer.wte.weight"] if config.tie_embeddings else t["lm_head.weight"]
    return state


def _template(config: ModelConfig) -> dict[str, torch.Tensor]:
    """Meta tensors of a tfkit GPT's state dict: names and shapes, no memory."""
    with torch.device("meta"):
        return GPT(config).state_dict()
