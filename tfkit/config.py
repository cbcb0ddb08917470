"""Typed run configuration: the single source of truth for option names.

A `RunConfig` is composed of one dataclass per concern (`model`, `optim`, `data`,
`train`, `log`). Every field has a default and a help string (its `help` metadata),
and fields marked `cli=True` become first-class command-line options: field `num_heads`
is option `--num-heads`, CSV column `num_heads` and wandb config key `num_heads`. Any
other field is reachable with `--set section.field=value` or a YAML file. Field names
are unique across sections, so the flat form (`to_flat_dict`) needs no prefixes.

Adding an option to `train pretrain` (and later to `ablate`) means adding one field here.

Validation happens as a config is built, whether from options, YAML, `--set` or a
checkpoint, so bad input is refused before anything is written: floats must be finite,
seeds in [0, 2**63 - 1], model shapes within what can plausibly be built (`MAX_SHAPE`,
`MAX_MODEL_BYTES`), and YAML files small text without alias bombs. `check_memory`
refuses a run whose estimated training memory exceeds its device's.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import json
import math
import os
import types
import typing
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, ClassVar, Literal, Self

from tfkit.errors import ConfigError

DEFAULT_MAX_STEPS = 1000
# the default warmup: this share of the run's step horizon, or a fixed count when only time stops the run
WARMUP_FRACTION = 0.05
DEFAULT_WARMUP_STEPS = 50

# Seeds are stored as int64 (the `seed` column of results.csv, torch's generators), and
# numpy's generators take no negative seed: every seed is in [0, 2**63 - 1].
SEED_MAX = 2**63 - 1
INT_MAX = 2**63 - 1  # any integer option: torch, numpy and the CSV columns hold int64

# What a config may ask of the model, whether typed or read from a checkpoint: bounds on
# what can plausibly be built and trained, so that a wrong or hostile config is refused
# with a message instead of allocating memory until the machine gives up.
MAX_SHAPE = {
    "max_seq_len": 2**20,  # position tables and attention grow with the context; 1M tokens is far past small models
    "vocab_size": 2**24,  # no tokenizer comes near 16M ids; shards store ids as uint32
    "width": 2**16,
    "depth": 2**12,
}
# Weights and buffers in float32. Training needs about four times this (gradients and
# AdamW's two moments), more than any single accelerator holds.
MAX_MODEL_BYTES = 2**36  # 64 GiB
# States per channel of the `--mixer ssm` layer (tfkit.models.ssm), Mamba's d_state.
SSM_STATE = 16
# Runs whose estimated training memory is below this are not checked against the device
# (so small runs never pay for asking CUDA how much memory it has).
MEMORY_CHECK_FROM = 2**30
# Error messages show at most this many characters of a value.
MAX_SHOWN = 100
# A config file is a page of options: refuse files, and YAML alias expansions, far beyond that.
MAX_CONFIG_BYTES = 2**20
MAX_CONFIG_NODES = 10_000


def opt(
    default: Any = dataclasses.MISSING,
    help: str = "",
    *,
    cli: bool = True,
    identity: bool = True,
    sweep: bool | None = None,
    **kw: Any,
) -> Any:
    """A dataclass field with help text.

    `cli=True` makes it a first-class CLI option (several values at once in `tfkit ablate`).
    `identity=False` marks fields that describe how a run is executed or observed, not
    what it trains (seed, device, output, log / eval / checkpoint cadence): they are no
    part of a setting's id (`tfkit.ablate.grid.setting_id`), so changing one does not make
    `ablate --append` train anything again. `sweep=False` marks fields `ablate` never
    sweeps; it defaults to `identity` (a field outside the identity cannot tell settings
    apart), and a field may be in the identity yet not sweepable (`--init`).
    """
    sweep = identity if sweep is None else sweep
    if sweep and not identity:
        raise ValueError("a sweepable field must be part of the setting's identity")
    return field(default=default, metadata={"help": help, "cli": cli, "sweep": sweep, "identity": identity}, **kw)


def default_warmup(horizon: int | None) -> int:
    """The warmup of a run whose `--warmup-steps` is unset: a share of its steps, at least 1 and never all of them."""
    if horizon is None:
        return DEFAULT_WARMUP_STEPS
    return max(1, min(round(WARMUP_FRACTION * horizon), horizon - 1))


def option_label(name: str) -> str:
    """The CLI spelling of a field name, used in error messages: num_heads -> --num-heads."""
    return "--" + name.replace("_", "-")


def field_label(section: Any, name: str) -> str:
    """How a user sets a field: `--num-heads` for an option, `optim.eps` (for --set) otherwise."""
    f = next(f for f in dataclasses.fields(section) if f.name == name)
    return option_label(name) if f.metadata.get("cli") else f"{section.SECTION}.{name}"


def shown(value: Any) -> str:
    """`repr(value)` cut to `MAX_SHOWN` characters, for error messages."""
    text = repr(value)
    return text if len(text) <= MAX_SHOWN else text[: MAX_SHOWN - 3] + "..."


def shown_text(text: str) -> str:
    """`text` cut to `MAX_SHOWN` characters, for error messages."""
    return text if len(text) <= MAX_SHOWN else text[: MAX_SHOWN - 3] + "..."


def format_bytes(n: float) -> str:
    """1.5 GiB, 320.0 MiB: memory sizes in error messages."""
    if n >= 2**40:
        return f"{n / 2**40:,.1f} TiB"
    if n >= 2**30:
        return f"{n / 2**30:.1f} GiB"
    return f"{n / 2**20:.1f} MiB"


def check_fields(section: Any) -> None:
    """What every section checks first: floats are finite, integers fit int64, seeds are in range.

    Torch and numpy reject these later, or silently train on nothing (a learning rate of
    nan); here they are refused before anything is written, naming the option.
    """
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{field_label(section, f.name)} must be a finite number, got {value}")
        if isinstance(value, int) and not isinstance(value, bool):
            if f.name in ("seed", "val_seed") and not 0 <= value <= SEED_MAX:
                also = "; in tfkit ablate, --seed + --num-runs - 1 too" if f.name == "seed" else ""
                raise ConfigError(
                    f"{field_label(section, f.name)} must be between 0 and 2**63 - 1 ({SEED_MAX}{also}), got {value}"
                )
            if abs(value) > INT_MAX:
                label = field_label(section, f.name)
                raise ConfigError(f"{label} {value} is out of range: integer options hold at most 2**63 - 1")
        if isinstance(value, dict):  # process_params, given as --param name=value
            label = "--param" if f.name == "process_params" else field_label(section, f.name)
            for key, item in value.items():
                if isinstance(item, float) and not math.isfinite(item):
                    raise ConfigError(f"{label} {key} must be a finite number, got {item}")


@dataclass(kw_only=True)
class ModelConfig:
    """The GPT family: sizes, block kind, activation, norm and positions."""

    SECTION: ClassVar[str] = "model"

    vocab_size: int | None = opt(None, "Vocabulary size (taken from the data when unset).", cli=False)
    max_seq_len: int | None = opt(None, "Longest context the model accepts (defaults to --seq-len).", cli=False)
    depth: int = opt(2, "Number of transformer blocks.")
    width: int = opt(64, "Residual stream width (embedding size).")
    num_heads: int = opt(2, "Attention heads per block; must divide --width.")
    mlp_ratio: float = opt(4.0, "MLP hidden size as a multiple of --width (swiglu uses 2/3 of it).")
    activation: Literal["gelu", "relu", "relu2", "swiglu"] = opt("gelu", "MLP activation.")
    norm: Literal["layernorm", "rmsnorm"] = opt("layernorm", "Normalisation layer.")
    positions: Literal["learned", "rotary"] = opt("learned", "Position encoding.")
    block: Literal["sequential", "parallel"] = opt(
        "sequential",
        "Block kind: sequential (attention then MLP) or parallel (hlb-gpt's fused attention+MLP).",
    )
    linear_value: bool = opt(False, "Parallel blocks: no GELU on the attention values.")
    mixer: Literal["attention", "ssm"] = opt(
        "attention",
        "Sequence mixer of every block: causal attention, or ssm (a selective diagonal state-space layer, "
        f"{SSM_STATE} states per channel; --num-heads does not apply).",
    )
    qk_norm: bool = opt(False, "Normalise queries and keys per head before attention.")
    tie_embeddings: bool = opt(True, "Share the token embedding with the output layer.")
    dropout: float = opt(0.0, "Dropout on attention weights and residual branches.")
    bias: bool = opt(False, "Biases in linear and norm layers.", cli=False)
    rope_base: float = opt(10000.0, "Rotary position base frequency.", cli=False)
    init_std: float = opt(0.02, "Standard deviation of the weight initialisation.", cli=False)
    model_scale: float | None = opt(
        None,
        "Derive --depth and --width from one scale factor, as hlb-gpt does: "
        "width = nearest multiple of 64 to 384*log2(1+scale), depth = round(8*log2(1+scale)).",
    )
    scale_base_depth: int = opt(8, "Depth of the --model-scale 1 model.", cli=False)
    scale_base_width: int = opt(384, "Width of the --model-scale 1 model.", cli=False)

    def __post_init__(self) -> None:
        check_fields(self)
        for name in ("depth", "width", "num_heads", "scale_base_depth", "scale_base_width"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{field_label(self, name)} must be at least 1, got {getattr(self, name)}")
        if self.max_seq_len is not None and self.max_seq_len < 1:
            raise ConfigError(f"max_seq_len must be at least 1, got {self.max_seq_len}")
        for name, bound in MAX_SHAPE.items():
            value = getattr(self, name)
            if value is not None and value > bound:
                raise ConfigError(
                    f"{field_label(self, name)} {value:,} is above {bound:,}, the largest tfkit builds "
                    "(a bound on what a config, typed or read from a checkpoint, may ask for)"
                )
        if self.mixer == "ssm" and self.qk_norm:
            raise ConfigError("--qk-norm normalises attention's queries and keys: --mixer ssm has none")
        if self.mixer == "ssm" and self.positions == "rotary":
            raise ConfigError("--positions rotary acts inside attention: --mixer ssm takes --positions learned")
        if self.mixer == "attention" and self.width % self.num_heads:
            raise ConfigError(f"--num-heads ({self.num_heads}) must divide --width ({self.width})")
        if self.positions == "rotary" and (self.width // self.num_heads) % 2:
            raise ConfigError(
                f"--positions rotary needs an even head size; --width {self.width} / "
                f"--num-heads {self.num_heads} = {self.width // self.num_heads}"
            )
        if self.mlp_ratio <= 0:
            raise ConfigError(f"--mlp-ratio must be positive, got {self.mlp_ratio}")
        if self.rope_base <= 0:
            raise ConfigError(f"model.rope_base must be positive, got {self.rope_base}")
        if self.init_std < 0:
            raise ConfigError(f"model.init_std must be >= 0, got {self.init_std}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"--dropout must be in [0, 1), got {self.dropout}")
        if self.linear_value and self.block != "parallel":
            raise ConfigError("--linear-value only applies to --block parallel")
        if self.vocab_size is not None and self.vocab_size < 2:
            raise ConfigError(f"vocab_size must be at least 2, got {self.vocab_size}")
        if self.model_scale is not None:
            depth, width = scaled_shape(self.model_scale, self.scale_base_depth, self.scale_base_width)
            if (depth, width) != (self.depth, self.width):
                raise ConfigError(
                    f"--model-scale {self.model_scale:g} gives --depth {depth} --width {width}, "
                    f"not --depth {self.depth} --width {self.width}"
                )
        params, buffers = self.size()
        if 4 * (params + buffers) > MAX_MODEL_BYTES:
            raise ConfigError(
                f"this model needs {format_bytes(4 * (params + buffers))} for its weights and buffers "
                f"({params:,} parameters; {self.describe()}), above the {format_bytes(MAX_MODEL_BYTES)} tfkit "
                "builds: training needs about four times that, more than any single accelerator holds"
            )

    def describe(self) -> str:
        """The shape in option form, for messages: --depth 2 --width 64 vocab_size 3 max_seq_len 64."""
        text = f"--depth {self.depth} --width {self.width}"
        for name in ("vocab_size", "max_seq_len"):
            if getattr(self, name) is not None:
                text += f" {name} {getattr(self, name):,}"
        return text

    def size(self) -> tuple[int, int]:
        """(parameters, buffer elements) of the GPT this config builds, counted without building it.

        Unset vocab_size and max_seq_len count as 0 (no token tables, no position tables yet).
        The buffers are the rotary tables of every attention layer.
        """
        C, L = self.width, self.depth
        vocab, context = self.vocab_size or 0, self.max_seq_len or 0
        hidden = mlp_hidden_size(self)
        mlp_in = 2 * hidden if self.activation == "swiglu" else hidden
        norm = 2 * C if self.norm == "layernorm" and self.bias else C
        qk_norm = 2 * (C // self.num_heads) if self.qk_norm else 0
        bias = 1 if self.bias else 0
        # the mixer's input width (q, k, v; or u, z, dt, B, C) and its other weights (qk-norm; or A_log, dt_bias, D)
        mix_in, mix = (3 * C, qk_norm) if self.mixer == "attention" else (3 * C + 2 * SSM_STATE, 3 * C)
        if self.block == "parallel":
            block = norm + (C + bias) * (mix_in + mlp_in) + (hidden + C + bias) * C + mix
        else:
            block = 2 * norm + (C + bias) * (mix_in + C + mlp_in) + (hidden + bias) * C + mix
        params = L * block + norm + vocab * C * (1 if self.tie_embeddings else 2)
        if self.positions == "learned":
            params += context * C
        buffers = L * context * (C // self.num_heads) if self.positions == "rotary" else 0
        return params, buffers

    @property
    def true_model_scale(self) -> float:
        """Parameters of this model relative to the base model's, as hlb-gpt-cli logs it.

        The base is this model at `scale_base_depth` x `scale_base_width`, everything else the
        same; `--model-scale` rounds widths to multiples of 64, so this is the size it really has.
        """
        base = copy.copy(self)  # not validated: the base shape only needs counting
        base.depth, base.width = self.scale_base_depth, self.scale_base_width
        return self.size()[0] / base.size()[0]


def mlp_hidden_size(config: ModelConfig) -> int:
    """Width of the MLP hidden layer (for swiglu: of each of its two input branches)."""
    if config.activation == "swiglu":
        # Three (width x hidden) matrices instead of two: take 2/3 of the hidden size so the
        # parameter count matches, rounded up to a multiple of 8 for matmul-friendly shapes.
        # Fraction keeps e.g. 2/3 * 4.0 * 768 exactly 2048 instead of 2048.0000000000002.
        exact = Fraction(config.mlp_ratio) * config.width * 2 / 3
        return math.ceil(exact / 8) * 8
    return max(1, round(config.mlp_ratio * config.width))


def scaled_shape(scale: float, base_depth: int, base_width: int) -> tuple[int, int]:
    """(depth, width) at `scale`: both grow with log2(1 + scale); width rounded to a multiple of 64."""
    if not (math.isfinite(scale) and scale > 0):
        raise ConfigError(f"--model-scale must be a positive number, got {scale}")
    factor = math.log2(1.0 + scale)
    width = max(64, round(base_width * factor / 64) * 64)
    depth = max(1, round(base_depth * factor))
    return depth, width


@dataclass(kw_only=True)
class OptimConfig:
    """AdamW with decoupled weight decay and a warmup + decay learning-rate schedule."""

    SECTION: ClassVar[str] = "optim"

    lr: float = opt(3e-3, "Peak learning rate.")
    schedule: Literal["cosine", "linear", "constant"] = opt("cosine", "Decay after warmup.")
    warmup_steps: int | None = opt(
        None, f"Linear warmup steps (default: {WARMUP_FRACTION:.0%} of the run's steps when a stop sets them, else "
        f"{DEFAULT_WARMUP_STEPS}).",
    )
    min_lr_ratio: float = opt(0.1, "Final learning rate as a fraction of --lr.")
    weight_decay: float = opt(0.1, "Decoupled weight decay (not on norms, biases, embeddings).")
    weight_decay_mode: Literal["coupled", "independent"] = opt(
        "coupled",
        "coupled (PyTorch's AdamW): each step shrinks weights by current_lr * --weight-decay; independent "
        "(Loshchilov & Hutter, Wortsman et al.): by (current_lr / --lr) * --weight-decay, so the decay follows "
        "the schedule but not the peak learning rate (typical values ~1e-4).",
    )
    beta1: float = opt(0.9, "AdamW beta1.")
    beta2: float = opt(0.99, "AdamW beta2.")
    eps: float = opt(1e-8, "AdamW epsilon (smaller values help against lr sensitivity at scale).")
    grad_clip: float = opt(1.0, "Clip the global gradient norm to this value (0 disables).")
    grad_accum_steps: int = opt(1, "Micro-batches accumulated per optimizer step.")
    decay_embeddings: bool = opt(False, "Apply weight decay to embeddings too.", cli=False)
    decay_norms_and_biases: bool = opt(False, "Apply weight decay to norms and biases too.", cli=False)

    def __post_init__(self) -> None:
        check_fields(self)
        if self.lr <= 0:
            raise ConfigError(f"--lr must be positive, got {self.lr}")
        if self.eps < 0:
            raise ConfigError(f"--eps must be >= 0, got {self.eps}")
        if self.warmup_steps is not None and self.warmup_steps < 0:
            raise ConfigError(f"--warmup-steps must be >= 0, got {self.warmup_steps}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ConfigError(f"--min-lr-ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.weight_decay < 0:
            raise ConfigError(f"--weight-decay must be >= 0, got {self.weight_decay}")
        for name in ("beta1", "beta2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"{option_label(name)} must be in [0, 1), got {getattr(self, name)}")
        if self.grad_clip < 0:
            raise ConfigError(f"--grad-clip must be >= 0, got {self.grad_clip}")
        if self.grad_accum_steps < 1:
            raise ConfigError(f"--grad-accum-steps must be at least 1, got {self.grad_accum_steps}")


@dataclass(kw_only=True)
class DataConfig:
    """What to train on and in which shape."""

    SECTION: ClassVar[str] = "data"

    data: str = opt(
        "mess3",
        "A built-in process (mess3, rrxor, ...; see `tfkit data processes`) or a folder of token shards "
        "(`tfkit tokenizer tokenize`).",
    )
    process_params: dict[str, float] = opt(
        help="Parameters of a built-in process (--param x=0.2).", cli=False, default_factory=dict
    )
    seq_len: int = opt(64, "Tokens of context per training sequence.")
    batch_size: int = opt(64, "Sequences per micro-batch.")
    train_sequences: int = opt(65536, "Sequences in one epoch of synthetic data.", cli=False)
    resample_each_epoch: bool = opt(
        True, "Synthetic data: draw fresh sequences every epoch (false repeats one set).", cli=False
    )
    val_examples: int = opt(
        4096, "Validation sequences scored at each evaluation (token shards: at most the first N windows).", cli=False
    )
    val_seed: int = opt(1234, "Seed of the validation set (the same for every run).", cli=False)

    def __post_init__(self) -> None:
        check_fields(self)
        for name in ("seq_len", "batch_size", "train_sequences", "val_examples"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{option_label(name)} must be at least 1, got {getattr(self, name)}")
        if not self.data:
            raise ConfigError("--data must not be empty")


@dataclass(kw_only=True)
class TrainConfig:
    """Stop criteria, evaluation cadence, device, precision and seed."""

    SECTION: ClassVar[str] = "train"

    max_steps: int | None = opt(None, f"Stop after this many optimizer steps (default {DEFAULT_MAX_STEPS} if no stop is given).")
    max_tokens: int | None = opt(None, "Stop after this many training tokens (train icl: in-context points, points_seen).")
    max_epochs: float | None = opt(None, "Stop after this many epochs.")
    max_time_seconds: float | None = opt(None, "Stop after this much wall time.")
    eval_every: int = opt(100, "Evaluate every N steps (and always at the end).", identity=False)
    max_epochs_between_evals: float | None = opt(None, "Evaluate at least this often, in epochs.", identity=False)
    checkpoint_every: int | None = opt(None, "Save a checkpoint every N steps (always at the end).", identity=False)
    # the seed is part of a run's id (<setting_id>-s<seed>), not of its setting's
    seed: int = opt(0, "Seed for python, numpy and torch.", identity=False)
    device: str = opt("auto", "auto, cpu, cuda, cuda:N or mps.", identity=False)
    compile: Literal["auto", "on", "off"] = opt("auto", "torch.compile the model (auto: on CUDA only).", identity=False)
    precision: Literal["auto", "bf16", "fp32"] = opt("auto", "auto: bf16 autocast on CUDA, fp32 elsewhere.")
    max_bad_steps: int = opt(10, "Consecutive non-finite steps that fail the run.", cli=False)
    z_loss: float = opt(
        0.0, "Coefficient of the z-loss term z_loss * mean(log^2 Z) on the output softmax (PaLM; 1e-4 is usual).",
    )
    log_logits: bool = opt(
        True, "Each train row: max attention logit per layer and output-logit mean, max and log Z, from an "
        "extra forward of the logged micro-batch without gradients.", identity=False,
    )
    log_layer_stats: bool = opt(
        False, "Each train row: per layer, parameter norm, gradient norm (before clipping) and update/parameter "
        "RMS ratio.", identity=False,
    )
    log_step_losses: bool = opt(
        False, "Write every step's train_loss and grad_norm to step_losses.csv (read from the device at log "
        "points, so no extra sync).", identity=False,
    )
    keep_last: int | None = opt(None, "Keep only the newest N checkpoints (default: all).", identity=False)
    parallel: Literal["ddp", "fsdp"] = opt(
        "ddp", "Under torchrun: ddp replicates the model on every process; fsdp shards parameters, gradients and "
        "optimizer state over them (PyTorch's fully_shard).", identity=False,
    )
    spike_action: Literal["log", "checkpoint", "skip", "rollback", "stop"] = opt(
        "log",
        "On a loss spike (loss or grad norm above mean + k*std of recent steps): log it to spikes.csv; also "
        "checkpoint the state before the update; skip the update; rollback to the last checkpoint and skip "
        "that data; or stop the run.",
    )
    spike_window: int = opt(128, "Recent steps whose loss and grad norm the spike test compares with.", cli=False)
    spike_sigma: float = opt(6.0, "k in mean + k*std: how far above recent steps a spike is.", cli=False)
    spike_min_history: int = opt(32, "Steps seen before any step can count as a spike.", cli=False)
    spike_max_rollbacks: int = opt(5, "Rollbacks (--spike-action rollback) before the run fails.", cli=False)
    peak_flops: float | None = opt(
        None, "The device's peak FLOP/s for the mfu column (default: bf16 dense peak of known GPUs).", cli=False,
        identity=False,
    )

    def __post_init__(self) -> None:
        check_fields(self)
        for name in ("keep_last", "spike_window", "spike_min_history"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{option_label(name)} must be at least 1, got {value}")
        if self.spike_max_rollbacks < 0:
            raise ConfigError(f"train.spike_max_rollbacks must be at least 0, got {self.spike_max_rollbacks}")
        if self.z_loss < 0:
            raise ConfigError(f"--z-loss must be >= 0, got {self.z_loss}")
        if self.spike_sigma <= 0:
            raise ConfigError(f"train.spike_sigma must be positive, got {self.spike_sigma}")
        if self.peak_flops is not None and self.peak_flops <= 0:
            raise ConfigError(f"train.peak_flops must be positive, got {self.peak_flops}")
        for name in ("max_steps", "max_tokens", "max_epochs", "max_time_seconds"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f"{option_label(name)} must be positive, got {value}")
        for name in ("eval_every", "max_bad_steps"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{option_label(name)} must be at least 1, got {getattr(self, name)}")
        if self.checkpoint_every is not None and self.checkpoint_every < 1:
            raise ConfigError(f"--checkpoint-every must be at least 1, got {self.checkpoint_every}")
        if self.max_epochs_between_evals is not None and self.max_epochs_between_evals <= 0:
            raise ConfigError(f"--max-epochs-between-evals must be positive, got {self.max_epochs_between_evals}")
        dev = self.device
        if not (dev in ("auto", "cpu", "cuda", "mps") or (dev.startswith("cuda:") and dev[5:].isdigit())):
            raise ConfigError(f"--device must be auto, cpu, cuda, cuda:N or mps, got {shown(dev)}")


@dataclass(kw_only=True)
class LogConfig:
    """Where the run directory goes and what it logs to."""

    SECTION: ClassVar[str] = "log"

    out: str | None = opt(None, "Run directory (default runs/<data>-<timestamp>).", identity=False)
    log_every: int = opt(10, "Log a train row every N steps.", identity=False)
    wandb_project: str | None = opt(None, "Also log to this wandb project.", identity=False)
    wandb_entity: str | None = opt(None, "wandb entity (user or team).", cli=False, identity=False)
    wandb_group: str | None = opt(None, "wandb group of the run (ablate: one per ablation).", cli=False, identity=False)
    tensorboard: bool = opt(
        False, "Also write TensorBoard event files to <run>/tensorboard/ (tags: the CSV column names).", identity=False
    )
    s3_uri: str | None = opt(
        None, "Push the run directory to <this prefix>/<run name> at the end (s3://bucket/prefix).", identity=False
    )
    s3_every_checkpoint: bool = opt(
        False, "With --s3-uri: also push after each --checkpoint-every checkpoint, in the background.", identity=False
    )

    def __post_init__(self) -> None:
        check_fields(self)
        if self.log_every < 1:
            raise ConfigError(f"--log-every must be at least 1, got {self.log_every}")
        if self.s3_uri is not None:
            from tfkit.storage.s3 import parse_s3_uri

            parse_s3_uri(self.s3_uri, "--s3-uri")
        if self.s3_every_checkpoint and self.s3_uri is None:
            raise ConfigError("--s3-every-checkpoint needs --s3-uri")
        if self.tensorboard:
            import importlib.util

            # checked here, before anything is written, without importing it (--help stays fast)
            if importlib.util.find_spec("tensorboard") is None:
                raise ConfigError("--tensorboard needs the tensorboard package: pip install tensorboard")


SECTIONS: dict[str, type] = {
    "model": ModelConfig,
    "optim": OptimConfig,
    "data": DataConfig,
    "train": TrainConfig,
    "log": LogConfig,
}


class SectionedConfig:
    """The API shared by run configs made of named sections (`RunConfig`, the icl config).

    A subclass is a dataclass with one field per section and names its sections in the
    class attribute `SECTIONS` (field names unique across them); `train` (a `TrainConfig`)
    and `log` (a `LogConfig`) are always among them.
    """

    SECTIONS: ClassVar[dict[str, type]]

    def has_stop_criterion(self) -> bool:
        t = self.train
        return any(v is not None for v in (t.max_steps, t.max_tokens, t.max_epochs, t.max_time_seconds))

    def grid_updates(self, updates: dict[str, Any]) -> dict[str, Any]:
        """One grid point's `section.field` updates as this kind of run takes them.

        The default takes them all; a kind may drop values that do not apply to the
        rest of the point (so such points collapse into one setting instead of failing).
        """
        return updates

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Nested plain dict: {"model": {...}, "optim": {...}, ...}."""
        return dataclasses.asdict(self)

    def to_flat_dict(self) -> dict[str, Any]:
        """Flat dict keyed by bare field names (unique across sections): CSV and wandb keys."""
        flat: dict[str, Any] = {}
        for section in self.to_dict().values():
            flat.update(section)
        return flat

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "config") -> Self:
        """Build from a nested ({"model": {"width": 64}}) or flat ({"width": 64}) dict."""
        return cls().with_updates(data, source=source)

    def with_updates(self, data: dict[str, Any], *, source: str = "config") -> Self:
        """A copy with values replaced; keys are section dicts, bare field names or `section.field`."""
        sections = self.SECTIONS
        nested = self.to_dict()
        touched: set[str] = set()
        for key, value in data.items():
            if not isinstance(key, str):
                raise ConfigError(f"option names are text; {source} has {shown(key)}")
            if key in sections and isinstance(value, dict):
                for name, sub in value.items():
                    if not isinstance(name, str):
                        raise ConfigError(f"option names are text; {source} has {shown(name)} in {key}")
                    touched.add(_assign(nested, key, name, sub, source, sections))
            elif key in sections and not any(key in field_names(s, sections) for s in sections):
                raise ConfigError(f"{key} in {source} must be a mapping of {key} options, got {shown(value)}")
            elif "." in key:
                section, name = key.split(".", 1)
                if section not in sections:
                    raise ConfigError(
                        f"unknown section {shown(section)} in {source}: expected one of {', '.join(sections)}"
                    )
                touched.add(_assign(nested, section, name, value, source, sections))
            else:
                touched.add(_assign(nested, section_of(key, source, sections), key, value, source, sections))
        if "model" in nested:
            _apply_model_scale(nested["model"], touched)
        return type(self)(**{section: sections[section](**values) for section, values in nested.items()})

    @classmethod
    def from_yaml(cls, path: str | Path) -> Self:
        """Load a YAML file (nested by section, or flat field names)."""
        return cls().with_yaml(path)

    def with_yaml(self, path: str | Path) -> Self:
        path = Path(path)
        data = read_yaml(path)
        if data is None:
            return self
        if not isinstance(data, dict):
            raise ConfigError(f"{path} must hold a mapping of options, got {type(data).__name__}")
        return self.with_updates(data, source=str(path))

    def with_overrides(self, assignments: list[str]) -> Self:
        """Apply `--set section.field=value` strings, each converted by the field's type."""
        updates: dict[str, Any] = {}
        for item in assignments:
            key, sep, value = item.partition("=")
            if not sep or not key.strip():
                raise ConfigError(f"--set expects section.field=value, got {shown(item)}")
            updates[key.strip()] = value.strip()
        return self.with_updates(updates, source="--set")

    def save_json(self, path: str | Path) -> None:
        from tfkit.io import write_json_atomic

        write_json_atomic(path, self.to_dict())

    @classmethod
    def load_json(cls, path: str | Path) -> Self:
        return cls.from_dict(json.loads(Path(path).read_text()), source=str(path))

    def memory_parts(self, accelerator: bool) -> dict[str, int]:
        """Estimated bytes a run of this config holds at once while training, by part.

        Parts are `model`, `activations` and `data`; empty when the shapes are not known
        yet. A lower bound: what is certainly allocated, not allocator slack or workspaces.

        Args:
            accelerator: the run is on CUDA (bf16 activations, fused attention with dropout).
        """
        return {}

    def batch_shape(self) -> str:
        """The options that size one micro-batch, as a user typed them (for messages)."""
        return ""

    def check_memory(self) -> None:
        """Refuse a run whose estimated training memory is more than its device has.

        Only runs estimated above `MEMORY_CHECK_FROM` look at the device, so small runs
        never import torch or ask CUDA here.
        """
        if sum(self.memory_parts(accelerator=True).values()) < MEMORY_CHECK_FROM:
            return
        available, where, accelerator = device_memory(self.train.device)
        parts = self.memory_parts(accelerator=accelerator)
        needed = sum(parts.values())
        if available is None or needed <= available:
            return
        detail = ", ".join(f"{name} {format_bytes(n)}" for name, n in sorted(parts.items(), key=lambda p: -p[1]))
        largest = max(parts, key=parts.__getitem__)
        raise ConfigError(
            f"{self.batch_shape()} needs about {format_bytes(needed)} of memory to train ({detail}), "
            f"more than {where} has ({format_bytes(available)}); {MEMORY_ADVICE[largest]}"
        )


@dataclass(kw_only=True)
class RunConfig(SectionedConfig):
    """Everything one training run needs; saved as `train_config.json` in the run directory."""

    SECTIONS: ClassVar[dict[str, type]] = SECTIONS

    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    log: LogConfig = field(default_factory=LogConfig)

    def memory_parts(self, accelerator: bool) -> dict[str, int]:
        d = self.data
        parts = training_memory(
            self.model, d.batch_size, d.seq_len, accelerator=accelerator, precision=self.train.precision
        )
        if not Path(d.data).exists():  # a built-in process: one epoch and the validation set in memory
            # int64 tokens; the validation set also keeps its optimal loss per token (float64)
            parts["data"] = (8 * d.train_sequences + 16 * d.val_examples) * (d.seq_len + 1)
        return parts

    def batch_shape(self) -> str:
        return f"--batch-size {self.data.batch_size} x --seq-len {self.data.seq_len} ({self.model.describe()})"


def field_names(section: str, sections: dict[str, type] = SECTIONS) -> list[str]:
    return [f.name for f in dataclasses.fields(sections[section])]


def section_of(name: str, source: str = "config", sections: dict[str, type] = SECTIONS) -> str:
    """The section that owns a bare field name."""
    for section in sections:
        if name in field_names(section, sections):
            return section
    every = [n for s in sections for n in field_names(s, sections)]
    raise ConfigError(f"unknown option {shown(name)} in {source}{_did_you_mean(name, every)}")


def _did_you_mean(name: str, known: list[str]) -> str:
    hint = difflib.get_close_matches(name, known, n=1) if len(name) <= MAX_SHOWN else []
    return f" (did you mean {hint[0]!r}?)" if hint else ""


def _assign(
    nested: dict[str, dict[str, Any]], section: str, name: str, value: Any, source: str, sections: dict[str, type]
) -> str:
    cls = sections[section]
    fields = {f.name: f for f in dataclasses.fields(cls)}
    if name not in fields:
        raise ConfigError(f"unknown option {section}.{shown_text(name)} in {source}{_did_you_mean(name, list(fields))}")
    hints = typing.get_type_hints(cls)
    nested[section][name] = coerce(value, hints[name], f"{section}.{name}")
    return name


def _apply_model_scale(model: dict[str, Any], touched: set[str]) -> None:
    """A newly given --model-scale sets depth and width; an explicit different one conflicts."""
    if model["model_scale"] is None or not touched & {"model_scale", "scale_base_depth", "scale_base_width"}:
        return
    depth, width = scaled_shape(model["model_scale"], model["scale_base_depth"], model["scale_base_width"])
    for name, derived in (("depth", depth), ("width", width)):
        if name in touched and model[name] != derived:
            raise ConfigError(
                f"--model-scale {model['model_scale']:g} gives {option_label(name)} {derived}, "
                f"which conflicts with {option_label(name)} {model[name]}"
            )
        model[name] = derived


def coerce(value: Any, hint: Any, name: str) -> Any:
    """Convert a YAML value or command-line string to a field's declared type."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "null", "")):
            return None
        return coerce(value, inner[0], name)
    if origin is Literal:
        if not isinstance(value, str | int | float | bool) or value not in args:
            raise ConfigError(f"{name} must be one of {', '.join(map(str, args))}, got {shown(value)}")
        return value
    if origin is dict:
        if isinstance(value, str):
            pairs = [p for p in value.split(",") if p.strip()]
            value = dict(p.split("=", 1) for p in pairs if "=" in p)
        if not isinstance(value, dict):
            raise ConfigError(f"{name} must be a mapping, got {shown(value)}")
        return {str(k): coerce(v, args[1], f"{name}.{k}") for k, v in value.items()}
    if hint is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("true", "1", "yes", "on"):
            return True
        if text in ("false", "0", "no", "off"):
            return False
        raise ConfigError(f"{name} must be true or false, got {shown(value)}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            text = value.strip().replace("_", "")
            try:
                return int(text)  # exact, however long
            except ValueError:
                pass
            try:
                number = float(text)
            except ValueError:
                number = math.nan
            if number.is_integer():  # 1e6
                return int(number)
        raise ConfigError(f"{name} must be an integer, got {shown(value)}")
    if hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            try:
                return float(value)
            except OverflowError:  # an integer beyond any float
                raise ConfigError(f"{name} must be a finite number, got {shown(value)}") from None
        if isinstance(value, str):
            try:
                return float(value.strip().replace("_", ""))
            except ValueError:
                pass
        raise ConfigError(f"{name} must be a number, got {shown(value)}")
    if hint is str:
        if isinstance(value, list | dict | bytes):
            raise ConfigError(f"{name} must be text, got {shown(value)}")
        return str(value)
    raise TypeError(f"no conversion for {name}: {hint}")


# --- memory: what a run needs, what its device has ----------------------------------------


MEMORY_ADVICE = {
    "activations": "lower --batch-size (raise --grad-accum-steps to keep the batch) or the context",
    "data": "lower --seq-len, or data.train_sequences and data.val_examples",
    "model": "lower --width, --depth or the vocabulary",
}


def training_memory(
    model: ModelConfig, sequences: int, tokens: int, *, accelerator: bool, precision: str, loops: int = 1,
    extra_params: int = 0,
) -> dict[str, int]:
    """Bytes of the model state and the activations kept for the backward pass of one micro-batch.

    A lower bound, so that no run that fits is refused: what autograd certainly keeps,
    without allocator slack, workspaces or the optimizer's temporaries.

    Args:
        sequences, tokens: the micro-batch, `sequences` rows of `tokens` positions.
        accelerator: on CUDA (bf16 autocast unless `precision` is fp32, fused attention).
        loops: times the blocks run with a graph (a looped model's loss window).
        extra_params: parameters outside `model.size()` (read-in / read-out layers).
    """
    params, buffers = model.size()
    params += extra_params
    C, L = model.width, model.depth
    hidden = mlp_hidden_size(model)
    mlp_in = 2 * hidden if model.activation == "swiglu" else hidden
    rows = sequences * tokens
    # bytes per kept value: bf16 under autocast (the default on CUDA), fp32 otherwise
    per_value = 2 if precision == "bf16" or (precision == "auto" and accelerator) else 4
    if accelerator:
        # torch.compile may recompute the MLP activation: per position and block, the norm
        # outputs, q, k, v, the attention output and the residual stream (6C) and the MLP's
        # input; fp32 logits and their gradient
        activations = rows * L * loops * (6 * C + mlp_in) * per_value + 2 * 4 * rows * (model.vocab_size or 0)
    else:
        # eager, as measured on CPU: the same plus the activated MLP values; the logits,
        # their log-softmax and its gradient
        activations = rows * L * loops * (6 * C + mlp_in + hidden) * per_value + 3 * 4 * rows * (model.vocab_size or 0)
        if model.dropout > 0:
            # sdpa with dropout takes the math path on CPU: scores, weights and dropout mask per head
            activations += 3 * 4 * sequences * model.num_heads * tokens * tokens * L * loops
    # weights, gradients and AdamW's two moments in fp32; the rotary tables
    return {"model": 16 * params + 4 * buffers, "activations": activations}


def check_model_fits(model: ModelConfig) -> None:
    """Refuse to build a model whose float32 weights and buffers are more than this machine's memory."""
    params, buffers = model.size()
    needed = 4 * (params + buffers)
    available = host_memory() if needed > MEMORY_CHECK_FROM else None
    if available is not None and needed > available:
        raise ConfigError(
            f"this model needs {format_bytes(needed)} for its weights and buffers ({params:,} parameters; "
            f"{model.describe()}), more than this machine's RAM ({format_bytes(available)})"
        )


def host_memory() -> int | None:
    """This machine's memory in bytes (its RAM, or a smaller container limit); None if unknown."""
    try:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
    except OSError:
        return total
    return min(total, int(limit)) if limit.isdigit() else total


def device_memory(device: str) -> tuple[int | None, str, bool]:
    """(bytes, how to name it, is an accelerator) of the memory a run on `device` trains in.

    CPU and Apple's MPS (unified memory) train in the machine's RAM. None when the device
    is not there: resolving the device reports that.
    """
    if device in ("cpu", "mps"):
        return host_memory(), "this machine's RAM", False
    import torch

    if device == "auto" and not torch.cuda.is_available():
        return host_memory(), "this machine's RAM", False
    index = int(device[5:]) if device.startswith("cuda:") else 0
    if not torch.cuda.is_available() or index >= torch.cuda.device_count():
        return None, device, True
    return torch.cuda.get_device_properties(index).total_memory, f"cuda:{index}", True


# --- YAML config files -------------------------------------------------------------------


def read_yaml(path: Path) -> Any:
    """A YAML config file as plain data, refusing what is not a small YAML text.

    Binary files, files over `MAX_CONFIG_BYTES`, and aliases that are recursive or expand
    to more than `MAX_CONFIG_NODES` values ("billion laughs": each level repeats the one
    before, so 500 bytes expand to a billion strings). Aliases themselves are allowed;
    the node graph is measured before anything is built from it.
    """
    import yaml

    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise ConfigError(
            f"{path} is {format_bytes(path.stat().st_size)}: too large for a config file "
            f"(at most {format_bytes(MAX_CONFIG_BYTES)})"
        )
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is None or "\0" in text:
        raise ConfigError(f"{path} is not a YAML file: it holds binary data, not text")
    try:
        loader = yaml.SafeLoader(text)
    except yaml.reader.ReaderError:
        raise ConfigError(f"{path} is not a YAML file: it holds control characters, not text") from None
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        size = _expanded_size(node, {}, set())
        if size > MAX_CONFIG_NODES:
            raise ConfigError(
                f"{path} expands to {size:,} values through YAML aliases; a config holds at most "
                f"{MAX_CONFIG_NODES:,} (an alias bomb?)"
            )
        return loader.construct_document(node)
    except _RecursiveAlias:
        raise ConfigError(f"{path} holds a recursive YAML alias (a value that contains itself)") from None
    except yaml.reader.ReaderError:
        raise ConfigError(f"{path} is not a YAML file: it holds control characters, not text") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {shown_text(str(e).splitlines()[0])}") from None
    except RecursionError:
        raise ConfigError(f"{path} nests too deeply to be a config file") from None
    finally:
        loader.dispose()


class _RecursiveAlias(Exception):
    pass


def _expanded_size(node: Any, sizes: dict[int, int], open_nodes: set[int]) -> int:
    """Values `node` stands for once every alias is expanded; each distinct node is measured once."""
    import yaml

    key = id(node)
    if key in sizes:
        return sizes[key]
    if isinstance(node, yaml.ScalarNode):
        return 1
    if key in open_nodes:
        raise _RecursiveAlias
    open_nodes.add(key)
    children = [n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode) else node.value
    sizes[key] = 1 + sum(_expanded_size(child, sizes, open_nodes) for child in children)
    open_nodes.discard(key)
    return sizes[key]
