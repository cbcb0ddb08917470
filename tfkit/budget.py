"""Orders of magnitude before a run: parameters, FLOPs, tokens, memory and time.

`estimate_budget(config, gpu="h100", mfu=0.4)` reads a `RunConfig` as `tfkit train
pretrain` would run it, without reading the data or allocating the model, and returns a
`Budget`:

- parameters: counted on the real `tfkit.models.gpt.GPT` built on PyTorch's meta device
  (shapes only, no memory), in total and without the embeddings (Kaplan et al.'s N);
- FLOPs per token: `GPT.flops_per_token` (6 x the matmul weights, plus attention or the
  ssm's scan);
- tokens: what the run's stop gives (steps x batch x seq-len x grad accumulation;
  `--max-tokens` rounded up to whole steps; `--max-epochs`; with only
  `--max-time-seconds`, what the GPU gets through in that time at the given MFU),
  compared with the Chinchilla-optimal 20 tokens per parameter (Hoffmann et al., 2022);
- training FLOPs: FLOPs per token x tokens;
- memory per device: fp32 weights, fp32 gradients, AdamW's two fp32 moments, the bf16
  weight copies autocast keeps for the backward pass, buffers (rotary tables) and the
  activations of one micro-batch (`activation_memory`);
- time: training FLOPs / (the GPU's bf16 dense peak x MFU), peaks from
  `tfkit.training.throughput.PEAK_FLOPS`.

Every estimate is for one device running the eager model; `torch.compile` (the default on
CUDA) fuses element-wise work and usually needs less activation memory. The CUDA context
and the allocator's slack are not counted.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tfkit.config import DEFAULT_MAX_STEPS, SSM_STATE, DataConfig, ModelConfig, RunConfig, mlp_hidden_size
from tfkit.errors import ConfigError, DataError

CHINCHILLA_TOKENS_PER_PARAM = 20  # Hoffmann et al. (2022): compute-optimal training uses ~20 tokens per parameter
DEFAULT_MFU = 0.4

# Activations autograd keeps per MLP hidden unit (H) and position, by activation.
# Sequential block: gelu (either form) keeps its input and output (the second linear's input), relu only
# its output, relu2 the relu output and its square, swiglu the value and gate (one tensor),
# silu(gate) and the product.
MLP_KEPT = {"gelu": 2, "gelu_tanh": 2, "relu": 1, "relu2": 2, "swiglu": 4}
# Parallel block: the fused input linear's output is kept whole (it holds the MLP's
# pre-activation); beyond it, relu and relu2 keep the relu output and swiglu silu(gate).
PARALLEL_MLP_KEPT = {"gelu": 0, "gelu_tanh": 0, "relu": 1, "relu2": 1, "swiglu": 1}
# `--mixer ssm`: steps per chunk of the scan (tfkit.models.ssm.SSM_CHUNK, kept here so planning imports no torch)
SSM_CHUNK = 16


class PlannedRunConfig(RunConfig):
    """A `RunConfig` that is planned here, not run: never refused for this machine's memory.

    `tfkit budget` plans runs for other devices (a GPU, from a laptop); the model and
    option checks still apply.
    """

    def check_memory(self) -> None:
        return None


@dataclass
class Budget:
    """What a run costs, before it starts; `to_dict` gives the `--json` form."""

    model: ModelConfig
    seq_len: int
    batch_size: int
    grad_accum_steps: int
    num_params: int
    num_params_non_embedding: int
    num_params_matmul: int  # weights of every linear layer, a tied lm_head included (what the FLOPs count)
    flops_per_token: float
    tokens_per_step: int
    steps: int | None  # None: the run stops on time only and no --gpu says how fast it goes
    tokens: int | None
    stop: str  # the option that ends the run first
    precision: str  # bf16 or fp32, as the activations are budgeted
    memory: dict[str, int]  # bytes per device, by part; `total` is their sum
    activations_per_layer: int
    gpu: str | None = None
    peak_flops: float | None = None
    mfu: float | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def chinchilla_tokens(self) -> int:
        return CHINCHILLA_TOKENS_PER_PARAM * self.num_params

    @property
    def tokens_per_param(self) -> float | None:
        return None if self.tokens is None else self.tokens / self.num_params

    @property
    def chinchilla_fraction(self) -> float | None:
        """The run's tokens as a fraction of the Chinchilla-optimal tokens (1.0: optimal)."""
        return None if self.tokens is None else self.tokens / self.chinchilla_tokens

    @property
    def train_flops(self) -> float | None:
        return None if self.tokens is None else self.flops_per_token * self.tokens

    @property
    def tokens_per_s(self) -> float | None:
        """Training tokens per second on `gpu` at `mfu`."""
        if self.peak_flops is None or self.mfu is None:
            return None
        return self.peak_flops * self.mfu / self.flops_per_token

    @property
    def time_s(self) -> float | None:
        if self.train_flops is None or self.tokens_per_s is None:
            return None
        return self.tokens / self.tokens_per_s  # type: ignore[operator]

    def to_dict(self) -> dict[str, Any]:
        m = self.model
        return {
            "depth": m.depth,
            "width": m.width,
            "num_heads": m.num_heads,
            "vocab_size": m.vocab_size,
            "seq_len": self.seq_len,
            "batch_size": self.batch_size,
            "grad_accum_steps": self.grad_accum_steps,
            "model_scale": m.model_scale,
            "true_model_scale": m.true_model_scale,
            "num_params": self.num_params,
            "num_params_non_embedding": self.num_params_non_embedding,
            "num_params_matmul": self.num_params_matmul,
            "flops_per_token": self.flops_per_token,
            "chinchilla_tokens": self.chinchilla_tokens,
            "tokens_per_step": self.tokens_per_step,
            "steps": self.steps,
            "tokens": self.tokens,
            "stop": self.stop,
            "tokens_per_param": self.tokens_per_param,
            "chinchilla_fraction": self.chinchilla_fraction,
            "train_flops": self.train_flops,
            "precision": self.precision,
            "memory_bytes": dict(self.memory),
            "activations_per_layer_bytes": self.activations_per_layer,
            "gpu": self.gpu,
            "peak_flops": self.peak_flops,
            "mfu": self.mfu,
            "tokens_per_s": self.tokens_per_s,
            "time_s": self.time_s,
            "notes": list(self.notes),
        }


def _squash(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def find_gpu(name: str) -> tuple[str, float]:
    """(table name, bf16 dense peak FLOP/s) of a GPU named as in `PEAK_FLOPS`, in any case.

    `h100`, `H100 PCIe`, `rtx4090` name an entry; a full CUDA device name
    (`NVIDIA H100 80GB HBM3`) finds the longest entry it contains.
    """
    from tfkit.training.throughput import PEAK_FLOPS

    wanted = _squash(name)
    for key, flops in PEAK_FLOPS:
        if _squash(key) == wanted:
            return key, flops
    inside = [(key, flops) for key, flops in PEAK_FLOPS if _squash(key) in wanted]
    if wanted and inside:
        return max(inside, key=lambda kv: len(_squash(kv[0])))
    known = ", ".join(key.lower().replace(" ", "-") for key, _ in PEAK_FLOPS)
    raise ConfigError(f"unknown --gpu {name!r}: known GPUs are {known}")


def data_facts(data: DataConfig) -> tuple[int, int]:
    """(vocabulary size, training sequences in one epoch) of `--data`, without reading the data.

    A built-in process knows its vocabulary; a folder of token shards says it in the train
    shard's sidecar, with its token count.
    """
    from tfkit.data.processes import PROCESSES, get_process

    if data.data in PROCESSES:
        return get_process(data.data, data.process_params).vocab_size, data.train_sequences
    path = Path(data.data)
    if not path.is_dir():
        raise DataError(
            f"unknown dataset {data.data!r}: not a folder of token shards, and built-in processes are "
            f"{', '.join(PROCESSES)}"
        )
    from tfkit.data.shards import list_splits, read_sidecar, shard_paths

    if "train" not in list_splits(path):
        raise DataError(f"{path} holds no train shard (train.bin); make one with `tfkit tokenizer tokenize`")
    meta = read_sidecar(shard_paths(path, "train")[1])
    # the trainer's windows: seq_len tokens each, on a grid shifted by up to seq_len
    return int(meta["vocab_size"]), max(0, int(meta["num_tokens"]) // data.seq_len - 1)


def resolve_model(config: RunConfig, vocab_size: int) -> ModelConfig:
    """The model the trainer builds: vocabulary from the data and context from --seq-len unless set."""
    model = config.model
    updates: dict[str, Any] = {}
    if model.vocab_size is None:
        updates["model.vocab_size"] = vocab_size
    elif model.vocab_size < vocab_size:
        raise ConfigError(f"vocab_size {model.vocab_size} is smaller than the data's vocabulary ({vocab_size})")
    if model.max_seq_len is None:
        updates["model.max_seq_len"] = config.data.seq_len
    elif model.max_seq_len < config.data.seq_len:
        raise ConfigError(f"--seq-len {config.data.seq_len} exceeds the model's max_seq_len {model.max_seq_len}")
    return config.with_updates(updates).model if updates else model


def count_model(model: ModelConfig, seq_len: int) -> dict[str, Any]:
    """Parameters, matmul weights, buffer elements and FLOPs per token of the real GPT, built on the meta device."""
    import torch
    from torch import nn

    from tfkit.models.gpt import GPT

    with torch.device("meta"):
        gpt = GPT(model)
    return {
        "num_params": gpt.num_params(),
        "num_params_non_embedding": gpt.num_params(non_embedding=True),
        "num_params_matmul": sum(m.weight.numel() for m in gpt.modules() if isinstance(m, nn.Linear)),
        "buffers": sum(b.numel() for b in gpt.buffers()),
        "flops_per_token": gpt.flops_per_token(seq_len),
    }


def activation_memory(
    model: ModelConfig, batch_size: int, seq_len: int, precision: str, fused_attention: bool = True
) -> dict[str, int]:
    """Bytes of activations one micro-batch keeps for the backward pass: `per_layer`, `output` and `total`.

    The per-layer count follows Korthikanti et al. (2022), "Reducing Activation
    Recomputation in Large Transformer Models": a GPT block without recomputation keeps
    s·b·h·(34 + 5·a·s/h) bytes in 16-bit (s context, b batch, h width, a heads), where
    34 = 4 (two layer-norm inputs) + 11 (attention: its input, q, k, v, output, dropout
    mask) + 19 (MLP: its input, the 4h GELU input and output, dropout mask) and 5·a·s/h
    the s×s attention scores. The same count for this model, per position, with e bytes
    per activation (2 in bf16, 4 in fp32) and H the MLP's hidden size:

    - each norm: its input in fp32 (the residual stream stays fp32 under autocast), 8 bytes
      of mean and 1/std (LayerNorm) or its normalised output and 4 bytes of 1/rms (RMSNorm);
    - sequential block: two norms; e·h·(1 + 3 + 1) for the attention's input, the fused
      q/k/v and sdpa's output, which the output projection reads in place (with rotary or
      qk-norm, q and k are new tensors, e·2h, and the projection reads a copy, e·h);
      4·a for sdpa's log-sum-exp; e·(h + k·H) for the MLP with k = `MLP_KEPT` (gelu: 2, as
      in 19 = 2 + 8 + 8 at H = 4h);
    - parallel block: one norm; e·(h + 3h + H_in) for the fused linear's input and output;
      e·h for GELU on the values (unless linear_value); e·2h with rotary or qk-norm; e·h for
      sdpa's output; e·k'·H (k' = `PARALLEL_MLP_KEPT`); e·(H + h) for the concatenation
      the output linear reads;
    - qk-norm: the normalised q and k in fp32 (and their fp32 copies in bf16) and 1/rms
      per head; dropout > 0: a one-byte mask per residual branch element.

    sdpa's fused kernels keep no s×s scores, so the 5·a·s/h term only comes back where
    attention takes the math path (`fused_attention=False`: dropout on a CPU), as 3·e·a·s
    per position (scores, weights, dropout). On a CPU these counts equal the bytes autograd
    saves, bf16 weight copies aside (budgeted apart). The output layer keeps the final
    norm, the lm_head's input (e·h) and 12·V bytes: the fp32 logits, their log-softmax and
    its gradient in the backward pass. Rotary in bf16 adds the cast cos/sin tables per layer.

    With `--mixer ssm` the attention terms give way to the scan's: e·(h + 3h + 2N) for its
    input and the fused projection (N states), e·h for its output, and 4·h·(2N + c) bytes
    for the fp32 scan itself, chunks of c = min(16, s) steps: an empirical count, within
    15% of what autograd saves on a CPU at widths 64 and 128 and contexts 4 to 64.
    """
    if precision not in ("bf16", "fp32"):
        raise ConfigError(f"precision must be bf16 or fp32, got {precision!r}")
    e = 2 if precision == "bf16" else 4
    C, a = model.width, model.num_heads
    H = mlp_hidden_size(model)
    norm = 4 * C + (8 if model.norm == "layernorm" else 4 * C + 4)
    new_qk = 2 * C if model.positions == "rotary" or model.qk_norm else 0
    qk_norm = 2 * (4 * C + (4 * C if e == 2 else 0)) + 2 * 4 * a if model.qk_norm else 0
    ssm = model.mixer == "ssm"
    scan = 4 * C * (2 * SSM_STATE + min(SSM_CHUNK, seq_len)) if ssm else 0
    mixer_in = 3 * C + 2 * SSM_STATE if ssm else 3 * C
    if model.block == "parallel":
        mlp_in = 2 * H if model.activation == "swiglu" else H
        value = 0 if model.linear_value else C
        kept = e * (C + mixer_in + mlp_in + value + new_qk + C + PARALLEL_MLP_KEPT[model.activation] * H + H + C)
        per_position = norm + kept + (scan if ssm else 4 * a) + qk_norm + (C if model.dropout > 0 else 0)
    else:
        output = 2 * C if new_qk else C
        attention = e * (C + mixer_in + new_qk + output) + (scan if ssm else 4 * a) + qk_norm
        mlp = e * (C + MLP_KEPT[model.activation] * H)
        per_position = 2 * norm + attention + mlp + (2 * C if model.dropout > 0 else 0)
    if not fused_attention and not ssm:
        per_position += 3 * e * a * seq_len
    positions = batch_size * seq_len
    per_layer = positions * per_position
    if model.positions == "rotary" and e == 2:
        per_layer += 4 * seq_len * (C // a // 2) * e  # the cos and sin tables cast to bf16, for q and for k
    output = positions * (norm + e * C + 12 * (model.vocab_size or 0))
    return {"per_layer": per_layer, "output": output, "total": model.depth * per_layer + output}


def run_length(config: RunConfig, sequences_per_epoch: int, seconds_per_step: float | None) -> tuple[int | None, str]:
    """(optimizer steps, the option that ends the run first), as the trainer stops.

    Steps, `--max-tokens` (rounded up to whole steps) and `--max-epochs` as in the training
    loop; `--max-time-seconds` only when `seconds_per_step` is known (a --gpu and --mfu).
    With no stop at all the trainer runs its default `DEFAULT_MAX_STEPS`.
    """
    t, d = config.train, config.data
    tokens_per_step = d.batch_size * d.seq_len * config.optim.grad_accum_steps
    steps_per_epoch = max(1, (sequences_per_epoch // d.batch_size) // config.optim.grad_accum_steps)
    limits: list[tuple[int, str]] = []
    if t.max_steps is not None:
        limits.append((t.max_steps, "--max-steps"))
    if t.max_tokens is not None:
        limits.append((math.ceil(t.max_tokens / tokens_per_step), "--max-tokens"))
    if t.max_epochs is not None:
        limits.append((math.ceil(t.max_epochs * steps_per_epoch), "--max-epochs"))
    if t.max_time_seconds is not None and seconds_per_step is not None:
        limits.append((max(1, math.ceil(t.max_time_seconds / seconds_per_step)), "--max-time-seconds"))
    if limits:
        return min(limits)
    if t.max_time_seconds is not None:
        return None, "--max-time-seconds"
    return DEFAULT_MAX_STEPS, f"default ({DEFAULT_MAX_STEPS:,} steps)"


def estimate_budget(config: RunConfig, gpu: str | None = None, mfu: float = DEFAULT_MFU) -> Budget:
    """What the run of `config` costs: parameters, FLOPs, tokens, memory per device and time.

    Args:
        gpu: a GPU of `PEAK_FLOPS` (any case: `h100`, `a100`), for the time; it also makes
            `--precision auto` mean bf16, as on CUDA.
        mfu: the model FLOPs utilisation assumed for the time, in (0, 1].
    """
    if not (math.isfinite(mfu) and 0 < mfu <= 1):
        raise ConfigError(f"--mfu must be in (0, 1], got {mfu}")
    gpu_name, peak = find_gpu(gpu) if gpu is not None else (None, None)
    vocab_size, sequences_per_epoch = data_facts(config.data)
    model = resolve_model(config, vocab_size)
    d = config.data
    counts = count_model(model, d.seq_len)
    accelerator = gpu_name is not None or config.train.device.startswith("cuda")
    precision = config.train.precision
    if precision == "auto":
        precision = "bf16" if accelerator else "fp32"
    tokens_per_step = d.batch_size * d.seq_len * config.optim.grad_accum_steps
    seconds_per_step = None
    if peak is not None:
        seconds_per_step = counts["flops_per_token"] * tokens_per_step / (peak * mfu)
    steps, stop = run_length(config, sequences_per_epoch, seconds_per_step)

    params = counts["num_params"]
    fused = accelerator or model.dropout == 0
    activations = activation_memory(model, d.batch_size, d.seq_len, precision, fused_attention=fused)
    memory = {
        "weights": 4 * params,
        "gradients": 4 * params,
        "optimizer": 8 * params,
        "weight_copies": 2 * counts["num_params_matmul"] if precision == "bf16" else 0,
        "buffers": 4 * counts["buffers"],
        "activations": activations["total"],
    }
    memory["total"] = sum(memory.values())
    notes = []
    if not fused:
        notes.append("dropout on a CPU: attention takes sdpa's math path and keeps its s x s scores")
    return Budget(
        model=model,
        seq_len=d.seq_len,
        batch_size=d.batch_size,
        grad_accum_steps=config.optim.grad_accum_steps,
        num_params=params,
        num_params_non_embedding=counts["num_params_non_embedding"],
        num_params_matmul=counts["num_params_matmul"],
        flops_per_token=counts["flops_per_token"],
        tokens_per_step=tokens_per_step,
        steps=steps,
        tokens=None if steps is None else steps * tokens_per_step,
        stop=stop,
        precision=precision,
        memory=memory,
        activations_per_layer=activations["per_layer"],
        gpu=gpu_name,
        peak_flops=peak,
        mfu=mfu if peak is not None else None,
        notes=notes,
    )
