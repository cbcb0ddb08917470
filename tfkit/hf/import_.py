"""`import_hf`: a local transformers folder (GPT-2, Llama or Qwen3) as a tfkit run directory.

The run directory holds what `tfkit generate --run` and `--init` read, and only that:

- `checkpoints/0.pt` with its sha256 and the `latest` pointer, written by tfkit's own
  `save_checkpoint`: the weights, `config.model`, and the tokenizer record;
- `tokenizer.json`, a copy of the folder's, which the checkpoint names by absolute path
  and digest (as token shards name theirs);
- `train_config.json`: the model section and a `meta` saying where it came from.

A config option a tfkit GPT cannot express is refused with one line naming it: GPT-2's
tanh GELU (`gelu_new`), grouped-query attention, rope scaling, a norm epsilon other than
tfkit's, sliding windows, biases on attention but not the MLP. Dropout is not carried
(the imported model has --dropout 0). A GPT-2 whose biases are all zero (what
`tfkit export hf` writes for a model without them) is imported without biases.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import tfkit
from tfkit.config import ModelConfig, RunConfig, mlp_hidden_size
from tfkit.errors import ConfigError, DataError
from tfkit.hf.mapping import GPT2_ACTIVATIONS, LAYERNORM_EPS, RMS_EPS, from_hf_tensors
from tfkit.io import write_dir_atomic
from tfkit.models.gpt import GPT
from tfkit.tokenizer.train import load_tokenizer, tokenizer_sha256
from tfkit.training.checkpoint import checkpoint_path, save_checkpoint

ARCHITECTURES = {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM", "qwen3": "Qwen3ForCausalLM"}


@dataclass
class ImportResult:
    """What `import_hf` wrote."""

    run_dir: Path
    architecture: str
    checkpoint: Path
    num_params: int
    model: dict[str, Any]


def import_hf(model_dir: str | Path, out: str | Path, *, overwrite: bool = False) -> ImportResult:
    """Write the transformers model in `model_dir` as a tfkit run directory `out`."""
    model_dir, out = Path(model_dir), Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise ConfigError(f"--out {out} exists and is not an empty folder; pass --overwrite to replace it")
    hf = read_hf_config(model_dir)
    tensors = read_tensors(model_dir)
    config = model_config_of(hf, tensors)
    try:
        state = from_hf_tensors(config, tensors)
    except KeyError as e:
        raise DataError(f"MODEL_DIR {model_dir}: its weights have no tensor {e.args[0]}") from None
    except ValueError as e:
        raise DataError(f"MODEL_DIR {model_dir}: {e}") from None
    with torch.device("meta"):  # every name and shape, checked without allocating a model
        GPT(config).load_state_dict(state, assign=True)
    tokenizer_src = model_dir / "tokenizer.json"
    if not tokenizer_src.is_file():
        raise DataError(f"MODEL_DIR {model_dir} has no tokenizer.json (a fast tokenizer): a tfkit run needs one")
    ids = load_tokenizer(tokenizer_src).get_vocab_size(with_added_tokens=True)
    if ids > config.vocab_size:  # type: ignore[operator]
        raise DataError(
            f"MODEL_DIR {model_dir}: its tokenizer has {ids:,} ids, more than vocab_size {config.vocab_size:,}"
        )
    model_dict = RunConfig.from_dict({"model": vars(config)}, source=str(model_dir)).to_dict()["model"]
    tokenizer_path = out.resolve() / "tokenizer.json"  # where it will be once the folder is renamed into place
    record = {"tokenizer_path": str(tokenizer_path), "tokenizer_sha256": tokenizer_sha256(tokenizer_src)}
    arch = ARCHITECTURES[hf["model_type"]]
    meta = {"tfkit_version": tfkit.__version__, "imported_from": str(model_dir.resolve()), "hf_architecture": arch}
    num_params = _num_params(state)

    def write(tmp: Path) -> None:
        (tmp / "tokenizer.json").write_bytes(tokenizer_src.read_bytes())
        (tmp / "train_config.json").write_text(
            json.dumps({"model": model_dict, "meta": {**meta, **record, "num_params": num_params}}, indent=2) + "\n"
        )
        checkpoint = {
            "model": state,
            "config": {"model": model_dict},
            "tokenizer": record,
            "step": 0,
            "tokens_seen": 0,
            "tfkit_version": tfkit.__version__,
            "imported_from": meta,
        }
        (tmp / "checkpoints").mkdir()
        save_checkpoint(checkpoint_path(tmp, 0), checkpoint)

    write_dir_atomic(out, write, replace=overwrite)
    return ImportResult(out, arch, checkpoint_path(out, 0), num_params, model_dict)


def _num_params(state: dict[str, torch.Tensor]) -> int:
    """Parameters of a state dict, a tied matrix counted once."""
    return sum({id(t): t.numel() for t in state.values()}.values())


def read_hf_config(model_dir: Path) -> dict[str, Any]:
    """The folder's config.json, with a model_type tfkit imports."""
    path = model_dir / "config.json"
    if not model_dir.is_dir():
        raise DataError(f"MODEL_DIR {model_dir} is not a folder")
    if not path.is_file():
        raise DataError(f"MODEL_DIR {model_dir} has no config.json: not a transformers model folder")
    try:
        hf = json.loads(path.read_text())
    except ValueError as e:
        raise DataError(f"{path} is not JSON: {e}") from None
    if not isinstance(hf, dict) or hf.get("model_type") not in ARCHITECTURES:
        kind = hf.get("model_type") if isinstance(hf, dict) else None
        raise ConfigError(f"{path}: model_type {kind!r} is not imported; tfkit imports {', '.join(ARCHITECTURES)}")
    return hf


def read_tensors(model_dir: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the folder's model.safetensors, or of the shards its index names."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    single, index = model_dir / "model.safetensors", model_dir / "model.safetensors.index.json"
    if single.is_file():
        files = [single]
    elif index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (ValueError, KeyError, TypeError):
            raise DataError(f"{index} is not a safetensors index (no weight_map)") from None
        files = [model_dir / name for name in sorted(set(weight_map.values()))]
    else:
        raise DataError(f"MODEL_DIR {model_dir} has no model.safetensors (tfkit imports safetensors weights only)")
    tensors: dict[str, torch.Tensor] = {}
    for file in files:
        try:
            tensors.update(load_file(str(file)))
        except (SafetensorError, OSError) as e:
            raise DataError(f"{file} is not a readable safetensors file: {e}") from None
    return tensors


def _refuse(option: str, value: Any, why: str) -> ConfigError:
    return ConfigError(f"config.json {option} {value!r}: {why}")


def model_config_of(hf: dict[str, Any], tensors: dict[str, torch.Tensor]) -> ModelConfig:
    """The tfkit model config that computes what the transformers config does, or a refusal naming the option."""
    kind = hf["model_type"]
    if kind == "gpt2":
        return _gpt2_config(hf, tensors)
    act = hf.get("hidden_act", "silu")
    if act != "silu":
        raise _refuse("hidden_act", act, "tfkit's gated MLP is SwiGLU (silu)")
    width, heads = hf["hidden_size"], hf["num_attention_heads"]
    kv = hf.get("num_key_value_heads") or heads
    if kv != heads:
        raise _refuse(
            "num_key_value_heads", kv, f"grouped-query attention; tfkit has one key/value head per query head ({heads})"
        )
    head_dim = hf.get("head_dim") or width // heads
    if head_dim * heads != width:
        raise _refuse(
            "head_dim", head_dim, f"tfkit's head size is hidden_size / num_attention_heads ({width // heads})"
        )
    rope = hf.get("rope_parameters") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    scaling = hf.get("rope_scaling")
    if rope_type != "default" or (scaling and scaling.get("rope_type", scaling.get("type")) != "default"):
        raise _refuse("rope_scaling", scaling or rope, "tfkit's rotary has no scaling")
    if not math.isclose(hf.get("rms_norm_eps", RMS_EPS), RMS_EPS, rel_tol=0, abs_tol=1e-12):
        raise _refuse("rms_norm_eps", hf.get("rms_norm_eps"), f"tfkit's RMSNorm has eps {RMS_EPS}")
    bias = bool(hf.get("attention_bias", False))
    if kind == "llama" and bool(hf.get("mlp_bias", False)) != bias:
        raise _refuse(
            "mlp_bias", hf.get("mlp_bias"), "tfkit has biases on every linear layer or on none (attention_bias)"
        )
    if kind == "qwen3":
        if bias:
            raise _refuse(
                "attention_bias", True, "Qwen3's MLP has no biases, and tfkit biases every linear layer or none"
            )
        if hf.get("use_sliding_window"):
            raise _refuse("use_sliding_window", True, "tfkit attention is over the whole context")
    hidden = hf["intermediate_size"]
    if hidden % 8:
        raise _refuse("intermediate_size", hidden, "tfkit's SwiGLU hidden size is a multiple of 8")
    return _model_config(
        vocab_size=hf["vocab_size"],
        max_seq_len=hf.get("max_position_embeddings", 2048),
        depth=hf["num_hidden_layers"],
        width=width,
        num_heads=heads,
        mlp_ratio=_mlp_ratio(hidden, width, "swiglu"),
        activation="swiglu",
        norm="rmsnorm",
        positions="rotary",
        qk_norm=kind == "qwen3",
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        bias=bias,
        rope_base=float(rope.get("rope_theta", hf.get("rope_theta", 10000.0))),
        init_std=float(hf.get("initializer_range", 0.02)),
    )


def _gpt2_config(hf: dict[str, Any], tensors: dict[str, torch.Tensor]) -> ModelConfig:
    act = hf.get("activation_function", "gelu_new")
    if act not in GPT2_ACTIVATIONS.values():
        raise _refuse(
            "activation_function",
            act,
            "tfkit's GPT-2 MLP takes gelu (exact erf GELU), relu or relu2, not the tanh approximation",
        )
    if not math.isclose(hf.get("layer_norm_epsilon", LAYERNORM_EPS), LAYERNORM_EPS, rel_tol=0, abs_tol=1e-12):
        raise _refuse("layer_norm_epsilon", hf.get("layer_norm_epsilon"), f"tfkit's LayerNorm has eps {LAYERNORM_EPS}")
    for option, wanted in (("scale_attn_weights", True), ("scale_attn_by_inverse_layer_idx", False)):
        if bool(hf.get(option, wanted)) != wanted:
            raise _refuse(
                option, hf.get(option), f"tfkit attention scales by 1/sqrt(head size) alone ({option} {wanted})"
            )
    if hf.get("add_cross_attention"):
        raise _refuse("add_cross_attention", True, "tfkit's GPT has no cross-attention")
    width = hf.get("n_embd", 768)
    hidden = hf.get("n_inner") or 4 * width
    # biases all zero (what `tfkit export hf` writes for a model without them): imported without biases
    bias = any(bool(t.any()) for k, t in tensors.items() if k.endswith(".bias") and t.dim() == 1)
    return _model_config(
        vocab_size=hf.get("vocab_size", 50257),
        max_seq_len=hf.get("n_positions", 1024),
        depth=hf.get("n_layer", 12),
        width=width,
        num_heads=hf.get("n_head", 12),
        mlp_ratio=_mlp_ratio(hidden, width, act),
        activation=act,
        norm="layernorm",
        positions="learned",
        tie_embeddings=bool(hf.get("tie_word_embeddings", True)),
        bias=bias,
        init_std=float(hf.get("initializer_range", 0.02)),
    )


def _model_config(**fields: Any) -> ModelConfig:
    try:
        return ModelConfig(**fields)
    except ConfigError as e:
        raise ConfigError(f"the imported model cannot be built: {e}") from None


def _mlp_ratio(hidden: int, width: int, activation: str) -> float:
    """The roundest --mlp-ratio that gives an MLP of `hidden` units (4.0 rather than 4.125 where both do)."""
    exact = hidden * (1.5 if activation == "swiglu" else 1.0) / width
    for denominator in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096, 65536):
        base = round(exact * denominator)
        for numerator in (base - 1, base, base + 1):
            ratio = numerator / denominator
            if ratio > 0 and _hidden(ratio, width, activation) == hidden:
                return ratio
    if _hidden(exact, width, activation) == hidden:
        return exact
    raise ConfigError(f"no --mlp-ratio gives an MLP of {hidden} units at width {width}")


def _hidden(ratio: float, width: int, activation: str) -> int:
    return mlp_hidden_size(ModelConfig(width=width, num_heads=1, mlp_ratio=ratio, activation=activation))  # type: ignore[arg-type]
