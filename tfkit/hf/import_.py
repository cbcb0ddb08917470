"""`import_hf`: a transformers model (GPT-2, Llama or Qwen3) as a tfkit run directory.

MODEL is a local folder or, when no such path exists and it looks like one (`name` or
`user/name`), a Hugging Face Hub id: `huggingface_hub.snapshot_download` fetches only
config.json, the safetensors weights and tokenizer.json into its cache (and finds them
there, with HF_HUB_OFFLINE=1 too). The run directory holds what `tfkit generate --run`,
`--init`, `export hf` and `analyze beliefs` read, and only that:

- `checkpoints/0.pt` with its sha256 and the `latest` pointer, written by tfkit's own
  `save_checkpoint`: the weights, `config.model`, and the tokenizer record;
- `tokenizer.json`, a copy of the model's, which the checkpoint names relative to the run
  directory (`tokenizer.json`) with its digest, so the run can be moved or copied whole;
- `train_config.json`: the model section, a data section, and a `meta` saying where it
  came from. The data is the built-in process a tfkit export was trained on (its
  config.json's `tfkit_data`), so `analyze beliefs` takes it back; otherwise it names the
  source, which `analyze beliefs` refuses as no process.

Grouped-query attention (`num_key_value_heads`) becomes `--num-kv-heads`, `rms_norm_eps`
`model.norm_eps`, and linear or llama3 rope scaling `model.rope_scaling` (from
`rope_scaling`, else transformers 5.x's `rope_parameters`, as transformers reads them).
A config option a tfkit GPT cannot express is refused with one line naming it: other
rope types (dynamic, yarn, longrope, ...), partial rotary, a head size other than
hidden_size / num_attention_heads, a LayerNorm epsilon other than torch's, an activation
other than tfkit's (GPT-2's tanh GELUs are tfkit's gelu_tanh; a Llama or Qwen3 MLP with
relu is relu^2 where its gate_proj equals its up_proj), sliding windows, biases
on attention but not the MLP. Dropout is not carried (the imported model has --dropout
0). A GPT-2 whose biases are all zero (what `tfkit export hf` writes for a model without
them) is imported without biases.

`chat_tokens=True` adds the chat tokens tfkit's SFT and DPO data need to the run's
tokenizer.json, with embedding rows set to the mean of the existing ones
(`tfkit.hf.chat_tokens`); the run's vocab_size grows by the rows added, and its meta
records them (`chat_tokens`). Without it the tokenizer.json is copied byte for byte.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import tfkit
from tfkit.config import ModelConfig, RunConfig, mlp_hidden_size
from tfkit.config.rope import ROPE_SCALING
from tfkit.data.processes import PROCESSES
from tfkit.errors import ConfigError, DataError
from tfkit.hf.chat_tokens import CHAT_TOKENS, ChatTokens, add_chat_tokens, describe
from tfkit.hf.mapping import GPT2_IMPORTS, LAYERNORM_EPS, from_hf_tensors
from tfkit.io import write_dir_atomic
from tfkit.models.gpt import GPT
from tfkit.tokenizer.train import load_tokenizer
from tfkit.training.checkpoint import checkpoint_path, save_checkpoint

ARCHITECTURES = {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM", "qwen3": "Qwen3ForCausalLM"}
TOKENIZER = "tokenizer.json"  # its name in the run directory, and the record's path relative to it
# what import reads from a Hub repository: no other weights formats, no pytorch_model.bin
HUB_FILES = ["config.json", "model*.safetensors", "model.safetensors.index.json", TOKENIZER]
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")


@dataclass
class ImportResult:
    """What `import_hf` wrote."""

    run_dir: Path
    architecture: str
    checkpoint: Path
    num_params: int
    model: dict[str, Any]
    source: str
    chat_tokens: ChatTokens | None = None  # what --chat-tokens did; None without it
    notes: list[str] = field(default_factory=list)


def import_hf(
    model: str | Path, out: str | Path, *, overwrite: bool = False, chat_tokens: bool = False
) -> ImportResult:
    """Write the transformers model `model` (a local folder or a Hub id) as a tfkit run directory `out`.

    `chat_tokens` adds the chat tokens the tokenizer lacks, with embedding rows for them.
    """
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise ConfigError(f"--out {out} exists and is not an empty folder; pass --overwrite to replace it")
    model_dir, source, revision = resolve_model(model)
    hf = read_hf_config(model_dir)
    tensors = read_tensors(model_dir)
    config = model_config_of(hf, tensors)
    try:
        state = from_hf_tensors(config, tensors)
    except KeyError as e:
        raise DataError(f"MODEL {source}: its weights have no tensor {e.args[0]}") from None
    except ValueError as e:
        raise DataError(f"MODEL {source}: {e}") from None
    tokenizer_src = model_dir / TOKENIZER
    if not tokenizer_src.is_file():
        raise DataError(f"MODEL {source} has no tokenizer.json (a fast tokenizer): a tfkit run needs one")
    ids = load_tokenizer(tokenizer_src).get_vocab_size(with_added_tokens=True)
    if ids > config.vocab_size:  # type: ignore[operator]
        raise DataError(f"MODEL {source}: its tokenizer has {ids:,} ids, more than vocab_size {config.vocab_size:,}")
    tokenizer_bytes = tokenizer_src.read_bytes()
    grown = add_chat_tokens(tokenizer_bytes.decode(), state, config) if chat_tokens else None
    if grown is not None and grown.added:
        tokenizer_bytes, state, config = grown.tokenizer_json.encode(), grown.state, grown.config
    with torch.device("meta"):  # every name and shape, checked without allocating a model
        GPT(config).load_state_dict(state, assign=True)
    model_dict = RunConfig.from_dict({"model": vars(config)}, source=str(model_dir)).to_dict()["model"]
    # relative: `load_run` reads it against the run directory, wherever that is moved
    record = {"tokenizer_path": TOKENIZER, "tokenizer_sha256": hashlib.sha256(tokenizer_bytes).hexdigest()}
    arch = ARCHITECTURES[hf["model_type"]]
    meta: dict[str, Any] = {"tfkit_version": tfkit.__version__, "imported_from": source, "hf_architecture": arch}
    if revision is not None:
        meta["hf_revision"] = revision
    if grown is not None and grown.added:
        meta["chat_tokens"] = describe(grown)
    num_params = _num_params(state)
    data = _data_section(hf, source, config.max_seq_len)  # type: ignore[arg-type]

    def write(tmp: Path) -> None:
        (tmp / TOKENIZER).write_bytes(tokenizer_bytes)
        run = {"model": model_dict, "data": data, "meta": {**meta, **record, "num_params": num_params}}
        (tmp / "train_config.json").write_text(json.dumps(run, indent=2) + "\n")
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
    notes = []
    if grown is not None and not grown.added:
        notes.append(f"the tokenizer already has {', '.join(CHAT_TOKENS)}: --chat-tokens added nothing")
    return ImportResult(out, arch, checkpoint_path(out, 0), num_params, model_dict, source, grown, notes)


def _data_section(hf: dict[str, Any], source: str, max_seq_len: int) -> dict[str, Any]:
    """The run's data: the built-in process a tfkit export recorded, else the source the model came from."""
    recorded = hf.get("tfkit_data")
    if isinstance(recorded, dict) and isinstance(recorded.get("data"), str) and recorded["data"] in PROCESSES:
        data = {k: recorded[k] for k in ("data", "process_params", "seq_len") if k in recorded}
    else:
        data = {"data": source}
    data["seq_len"] = min(int(data.get("seq_len", 64)), max_seq_len)
    try:
        return RunConfig.from_dict({"data": data}, source="config.json tfkit_data").to_dict()["data"]
    except ConfigError:
        return RunConfig.from_dict({"data": {"data": source, "seq_len": data["seq_len"]}}).to_dict()["data"]


def resolve_model(model: str | Path) -> tuple[Path, str, str | None]:
    """(local folder, the source in words, the Hub revision) of MODEL: a path that exists, else a Hub id."""
    path = Path(model)
    text = str(model)
    if path.exists() or not HUB_ID.fullmatch(text):
        return path, str(path.resolve()), None
    folder = download_from_hub(text)
    return folder, text, folder.name


def download_from_hub(repo_id: str) -> Path:
    """The snapshot folder of Hub model `repo_id` with the files import reads (from the cache where it is there)."""
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import (
            GatedRepoError,
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )
    except ImportError:  # pragma: no cover - huggingface_hub is a dependency of tfkit
        raise ConfigError(f"MODEL {repo_id} is no local folder and huggingface_hub is not installed") from None
    where = f"MODEL {repo_id}: no such local folder, and as a Hugging Face Hub id"
    try:
        return Path(snapshot_download(repo_id, allow_patterns=HUB_FILES))
    except GatedRepoError:
        raise DataError(f"{where} it is gated: accept its terms on the Hub and log in (`hf auth login`)") from None
    except RepositoryNotFoundError:
        raise DataError(f"{where} there is no such model (or it is private: log in with `hf auth login`)") from None
    except RevisionNotFoundError:
        raise DataError(f"{where} it has no main revision") from None
    except LocalEntryNotFoundError:
        from huggingface_hub import constants

        why = "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else "the Hub cannot be reached"
        raise DataError(f"{where} it is not in the cache ({constants.HF_HUB_CACHE}) and {why}") from None
    except (OSError, ValueError) as e:  # HTTP errors are OSErrors; a malformed id is a ValueError
        raise DataError(f"{where} it could not be fetched: {' '.join(str(e).split())[:200]}") from None


def _num_params(state: dict[str, torch.Tensor]) -> int:
    """Parameters of a state dict, a tied matrix counted once."""
    return sum({id(t): t.numel() for t in state.values()}.values())


def read_hf_config(model_dir: Path) -> dict[str, Any]:
    """The folder's config.json, with a model_type tfkit imports."""
    path = model_dir / "config.json"
    if not model_dir.exists():
        raise DataError(f"MODEL {model_dir}: no such folder")
    if not model_dir.is_dir():
        raise DataError(f"MODEL {model_dir} is not a folder")
    if not path.is_file():
        raise DataError(f"MODEL {model_dir} has no config.json: not a transformers model folder")
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
        raise DataError(f"MODEL {model_dir} has no model.safetensors (tfkit imports safetensors weights only)")
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
    activation = _gated_activation(hf.get("hidden_act", "silu"), tensors)
    width, heads = hf["hidden_size"], hf["num_attention_heads"]
    kv = hf.get("num_key_value_heads") or heads
    if not isinstance(kv, int) or kv < 1 or heads % kv:
        raise _refuse("num_key_value_heads", kv, f"it must divide num_attention_heads ({heads})")
    head_dim = hf.get("head_dim") or width // heads
    if head_dim * heads != width:
        raise _refuse(
            "head_dim", head_dim, f"tfkit's head size is hidden_size / num_attention_heads ({width // heads})"
        )
    rope_base, rope_scaling = _rope_of(hf)
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
    if activation == "swiglu" and hidden % 8:
        raise _refuse("intermediate_size", hidden, "tfkit's SwiGLU hidden size is a multiple of 8")
    return _model_config(
        vocab_size=hf["vocab_size"],
        max_seq_len=hf.get("max_position_embeddings", 2048),
        depth=hf["num_hidden_layers"],
        width=width,
        num_heads=heads,
        mlp_ratio=_mlp_ratio(hidden, width, activation),
        activation=activation,
        norm="rmsnorm",
        positions="rotary",
        qk_norm=kind == "qwen3",
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        bias=bias,
        num_kv_heads=None if kv == heads else kv,
        norm_eps=float(hf.get("rms_norm_eps", 1e-6)),  # transformers' default for Llama and Qwen3
        rope_base=rope_base,
        rope_scaling=rope_scaling,
        init_std=float(hf.get("initializer_range", 0.02)),
    )


def _gated_activation(act: Any, tensors: dict[str, torch.Tensor]) -> str:
    """tfkit's activation for a Llama or Qwen3 MLP act(gate) * up: silu is swiglu; relu, with every gate
    equal to its up (what `tfkit export hf` writes for relu^2), is relu2, as relu(a) * a = relu(a)^2."""
    if act == "silu":
        return "swiglu"
    if act == "relu":
        gates = {k: v for k, v in tensors.items() if ".mlp.gate_proj." in k or k.startswith("mlp.gate_proj.")}
        ups = {k: tensors.get(k.replace("gate_proj", "up_proj")) for k in gates}
        if gates and all(ups[k] is not None and torch.equal(v, ups[k]) for k, v in gates.items()):
            return "relu2"
        raise _refuse(
            "hidden_act", act, "tfkit's gated MLP with relu is relu^2, whose gate_proj equals its up_proj; these differ"
        )
    raise _refuse("hidden_act", act, "tfkit's gated MLP is SwiGLU (silu), or relu^2 (relu with gate_proj = up_proj)")


def _rope_of(hf: dict[str, Any]) -> tuple[float, dict[str, Any] | None]:
    """(rope_base, rope_scaling) of a Llama or Qwen3 config.json, read as transformers reads them.

    transformers 5.x takes `rope_scaling` (4.x's field, with `rope_theta` beside it) before
    `rope_parameters`; a llama3 scaling without original_max_position_embeddings has
    max_position_embeddings.
    """
    rope = hf.get("rope_scaling") or hf.get("rope_parameters") or {}
    if not isinstance(rope, dict):
        raise _refuse("rope_scaling", rope, "not a mapping of rope parameters")
    partial = rope.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0))
    if partial not in (None, 1):
        raise _refuse("partial_rotary_factor", partial, "tfkit's rotary turns every dimension of a head")
    base = float(rope.get("rope_theta", hf.get("rope_theta", 10000.0)))
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind == "default":
        return base, None
    if not isinstance(kind, str) or kind not in ROPE_SCALING:
        raise _refuse("rope_scaling", rope, f"tfkit's rotary scales with rope_type {' or '.join(ROPE_SCALING)}")
    if kind == "llama3":
        rope = {"original_max_position_embeddings": hf.get("max_position_embeddings", 2048), **rope}
    missing = [name for name in ROPE_SCALING[kind] if name not in rope]
    if missing:
        raise _refuse("rope_scaling", rope, f"rope_type {kind} needs {', '.join(missing)}")
    return base, {"rope_type": kind, **{name: rope[name] for name in ROPE_SCALING[kind]}}


def _gpt2_config(hf: dict[str, Any], tensors: dict[str, torch.Tensor]) -> ModelConfig:
    act = hf.get("activation_function", "gelu_new")
    if act not in GPT2_IMPORTS:
        raise _refuse(
            "activation_function", act, f"tfkit's GPT-2 MLP computes one of {', '.join(GPT2_IMPORTS)} exactly"
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
    # reorder_and_upcast_attn scales before the matmul and computes in fp32: the same in fp32, kept either way
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
        mlp_ratio=_mlp_ratio(hidden, width, GPT2_IMPORTS[act]),
        activation=GPT2_IMPORTS[act],
        norm="layernorm",
        positions="learned",
        qk_norm=False,
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
