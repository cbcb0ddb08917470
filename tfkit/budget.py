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
- memory per device: fp32 weights, fp32 gradients, the optimizer's state (AdamW's two fp32
  moments; under `--optimizer muon`, one momentum for the hidden matrices), the bf16
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

from tfkit.config import DEFAULT_MAX_STEPS, DataConfig, ModelConfig, RunConfig
from tfkit.config.memory import activation_memory
from tfkit.errors import ConfigError, DataError

CHINCHILLA_TOKENS_PER_PARAM = 20  # Hoffmann et al. (2022): compute-optimal training uses ~20 tokens per parameter
DEFAULT_MFU = 0.4


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
    optimizer: str  # adamw or muon: what the optimizer's state holds
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
            "num_kv_heads": m.kv_heads,
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
            "optimizer": self.optimizer,
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


def optimizer_state(optimizer: str, params: int, hidden: int) -> int:
    """Bytes of the optimizer's state: two fp32 moments per parameter for AdamW; Muon keeps one
    momentum for each of the `hidden` matrix parameters it moves and AdamW's two for the rest."""
    if optimizer == "muon":
        return 4 * hidden + 8 * (params - hidden)
    return 8 * params


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
        "num_params_hidden": sum(p.numel() for p in gpt.hidden_matrices()),  # what --optimizer muon moves
        "buffers": sum(b.numel() for b in gpt.buffers()),
        "flops_per_token": gpt.flops_per_token(seq_len),
    }


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
        "optimizer": optimizer_state(config.optim.optimizer, params, counts["num_params_hidden"]),
        "weight_copies": 2 * counts["num_params_matmul"] if precision == "bf16" else 0,
        "averaged_weights": 4 * params if config.optim.ema_decay > 0 else 0,
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
        optimizer=config.optim.optimizer,
        memory=memory,
        activations_per_layer=activations["per_layer"],
        gpu=gpu_name,
        peak_flops=peak,
        mfu=mfu if peak is not None else None,
        notes=notes,
    )
