"""The sections of a pretraining run's config, one dataclass per concern: `ModelConfig`,
`OptimConfig`, `DataConfig`, `TrainConfig` and `LogConfig` (`SECTIONS`). Other kinds of
run reuse them (`tfkit.config.icl`, `tfkit.config.finetune`).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from fractions import Fraction
from typing import ClassVar, Literal

from tfkit.config.fields import (
    DEFAULT_MAX_STEPS,
    DEFAULT_WARMUP_STEPS,
    MAX_MODEL_BYTES,
    MAX_SHAPE,
    SSM_STATE,
    WARMUP_FRACTION,
    check_at_least,
    check_device_name,
    check_fields,
    field_label,
    format_bytes,
    opt,
    option_label,
)
from tfkit.config.rope import checked_rope_scaling
from tfkit.errors import ConfigError


@dataclass(kw_only=True)
class ModelConfig:
    """The GPT family: sizes, block kind, activation, norm and positions.

    The defaults are the block of the pretraining recipe (`--preset modern`'s: rotary,
    RMSNorm, relu^2, qk-norm, tied embeddings); `--preset nanogpt` is GPT-2's block.
    """

    SECTION: ClassVar[str] = "model"

    vocab_size: int | None = opt(None, "Vocabulary size (taken from the data when unset).", cli=False)
    max_seq_len: int | None = opt(None, "Longest context the model accepts (defaults to --seq-len).", cli=False)
    depth: int = opt(2, "Number of transformer blocks.")
    width: int = opt(64, "Residual stream width (embedding size).")
    num_heads: int = opt(2, "Attention heads per block; must divide --width.")
    num_kv_heads: int | None = opt(
        None,
        "Key/value heads per block (grouped-query attention: each serves --num-heads / --num-kv-heads query "
        "heads); must divide --num-heads (default: --num-heads, one per query head).",
    )
    mlp_ratio: float = opt(4.0, "MLP hidden size as a multiple of --width (swiglu uses 2/3 of it).")
    activation: Literal["gelu", "gelu_tanh", "relu", "relu2", "swiglu"] = opt(
        "relu2", "MLP activation (relu2: relu squared; gelu_tanh: the tanh approximation GPT-2 uses)."
    )
    norm: Literal["layernorm", "rmsnorm"] = opt("rmsnorm", "Normalisation layer.")
    positions: Literal["learned", "rotary"] = opt(
        "rotary", "Position encoding (--mixer ssm: learned unless given, as it has no attention to rotate)."
    )
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
    qk_norm: bool = opt(
        True, "Normalise queries and keys per head before attention (--mixer ssm: off unless given, it has none)."
    )
    tie_embeddings: bool = opt(True, "Share the token embedding with the output layer.")
    x0_mix: bool = opt(
        False,
        "Mix the embedding output x0 back into every block's input, x <- a x + b x0, with two learned scalars "
        "per block (a = 1, b = 0 at init).",
    )
    dropout: float = opt(0.0, "Dropout on attention weights and residual branches.")
    bias: bool = opt(False, "Biases in linear and norm layers.", cli=False)
    rope_base: float = opt(10000.0, "Rotary position base frequency.", cli=False)
    rope_scaling: dict[str, float | str] | None = opt(
        None,
        "Rotary frequency scaling, as transformers writes it: rope_type=linear,factor=F (every frequency "
        "divided by F) or rope_type=llama3,factor=F,low_freq_factor=L,high_freq_factor=H,"
        "original_max_position_embeddings=N (Llama 3.1's); unset: none.",
        cli=False,
    )
    norm_eps: float = opt(
        1e-6, "Epsilon of every RMSNorm (--norm rmsnorm's and --qk-norm's); LayerNorm keeps torch's 1e-5.", cli=False
    )
    init_std: float = opt(0.02, "Standard deviation of the weight initialisation.", cli=False)
    model_scale: float | None = opt(
        None,
        "Derive --depth and --width from one scale factor, as hlb-gpt does: "
        "width = nearest multiple of 64 to 384*log2(1+scale), depth = round(8*log2(1+scale)).",
    )
    scale_base_depth: int = opt(8, "Depth of the --model-scale 1 model.", cli=False)
    scale_base_width: int = opt(384, "Width of the --model-scale 1 model.", cli=False)
    preset: Literal["nanogpt", "modern"] | None = opt(
        None,
        "A recipe that sets the architecture and optimizer options: nanogpt (AdamW at lr 1e-3, cosine; learned "
        "positions, LayerNorm, GELU) or modern (rotary, relu2, qk-norm, RMSNorm; Muon at 0.02 with 3 Newton-Schulz "
        "steps and AdamW at 3e-3, cosine; scored through --ema-decay 0.98), which are also the defaults. An option "
        "also given (typed, in --config, by --set) keeps its value.",
    )

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
        if self.num_kv_heads is not None:
            if self.mixer == "ssm":
                raise ConfigError("--num-kv-heads groups attention's keys and values: --mixer ssm has none")
            if self.num_kv_heads < 1 or self.num_heads % self.num_kv_heads:
                raise ConfigError(f"--num-kv-heads ({self.num_kv_heads}) must divide --num-heads ({self.num_heads})")
        if self.positions == "rotary" and (self.width // self.num_heads) % 2:
            raise ConfigError(
                f"--positions rotary needs an even head size; --width {self.width} / "
                f"--num-heads {self.num_heads} = {self.width // self.num_heads}"
            )
        if self.mlp_ratio <= 0:
            raise ConfigError(f"--mlp-ratio must be positive, got {self.mlp_ratio}")
        if self.rope_base <= 0:
            raise ConfigError(f"model.rope_base must be positive, got {self.rope_base}")
        if self.rope_scaling is not None:
            self.rope_scaling = checked_rope_scaling(self.rope_scaling, self.positions)
        if self.norm_eps <= 0:
            raise ConfigError(f"model.norm_eps must be positive, got {self.norm_eps}")
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

    @property
    def kv_heads(self) -> int:
        """Key/value heads of every attention layer: `num_kv_heads`, or one per query head."""
        return self.num_heads if self.num_kv_heads is None else self.num_kv_heads

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
        kv = self.kv_heads * (C // self.num_heads)  # the width of k and of v
        # the mixer's input width (q, k, v; or u, z, dt, B, C) and its other weights (qk-norm; or A_log, dt_bias, D)
        mix_in, mix = (C + 2 * kv, qk_norm) if self.mixer == "attention" else (3 * C + 2 * SSM_STATE, 3 * C)
        if self.block == "parallel":
            block = norm + (C + bias) * (mix_in + mlp_in) + (hidden + C + bias) * C + mix
        else:
            block = 2 * norm + (C + bias) * (mix_in + C + mlp_in) + (hidden + bias) * C + mix
        params = L * block + norm + vocab * C * (1 if self.tie_embeddings else 2) + (2 * L if self.x0_mix else 0)
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
    """Muon on the hidden matrices (or AdamW everywhere) with decoupled weight decay and a warmup + decay schedule.

    The defaults are the optimizer of the pretraining recipe (`--preset modern`'s: Muon with
    three Newton-Schulz steps, AdamW at 3e-3 on the rest, cosine, a moving average of the
    weights at 0.98); in-context regression and fine-tuning keep AdamW (`tfkit.config.icl`,
    `tfkit.config.finetune`).
    """

    SECTION: ClassVar[str] = "optim"

    optimizer: Literal["adamw", "muon"] = opt(
        "muon",
        "adamw: AdamW on every parameter; muon: Muon (orthogonalised momentum) on the blocks' 2-D weight "
        "matrices at --muon-lr, AdamW at --lr on embeddings, the output layer, norms and biases.",
    )
    lr: float = opt(3e-3, "Peak learning rate.")
    muon_lr: float = opt(
        0.02,
        "--optimizer muon: peak learning rate of the hidden matrices (times sqrt(max(1, rows/cols))); it follows "
        "--schedule as --lr does.",
    )
    muon_momentum: float = opt(0.95, "--optimizer muon: Nesterov momentum of the hidden matrices.", cli=False)
    muon_ns_steps: int = opt(
        3,
        "--optimizer muon: Newton-Schulz iterations that orthogonalise each update (torch.optim.Muon takes 5; "
        "fewer cost less and leave the smallest singular values lower).",
    )
    schedule: Literal["cosine", "linear", "constant", "wsd"] = opt(
        "cosine",
        "Decay after warmup; wsd (warmup-stable-decay): the peak rate until the last --decay-fraction of the "
        "run, then linear decay.",
    )
    decay_fraction: float = opt(
        0.2, "--schedule wsd: the fraction of the run's steps, at its end, over which the rate decays."
    )
    warmup_steps: int | None = opt(
        None,
        f"Linear warmup steps (default: {WARMUP_FRACTION:.0%} of the run's steps when a stop sets them, else "
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
    ema_decay: float = opt(
        0.98,
        "Score and save an exponential moving average of the weights, spanning about 1 / (1 - d) steps: "
        "evaluations score it, and generation, fine-tuning and export load it from the run (0: off).",
    )
    decay_embeddings: bool = opt(False, "Apply weight decay to embeddings too.", cli=False)
    decay_norms_and_biases: bool = opt(False, "Apply weight decay to norms and biases too.", cli=False)

    def __post_init__(self) -> None:
        check_fields(self)
        if self.lr <= 0:
            raise ConfigError(f"--lr must be positive, got {self.lr}")
        if self.muon_lr <= 0:
            raise ConfigError(f"--muon-lr must be positive, got {self.muon_lr}")
        check_at_least(self, ("muon_ns_steps",))
        if not 0.0 <= self.muon_momentum < 1.0:
            raise ConfigError(f"optim.muon_momentum must be in [0, 1), got {self.muon_momentum}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError(f"--ema-decay must be in [0, 1), got {self.ema_decay}")
        if not 0.0 < self.decay_fraction <= 1.0:
            raise ConfigError(f"--decay-fraction must be in (0, 1], got {self.decay_fraction}")
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
        check_at_least(self, ("seq_len", "batch_size", "train_sequences", "val_examples"))
        if not self.data:
            raise ConfigError("--data must not be empty")


@dataclass(kw_only=True)
class TrainConfig:
    """Stop criteria, evaluation cadence, device, precision and seed."""

    SECTION: ClassVar[str] = "train"

    max_steps: int | None = opt(
        None, f"Stop after this many optimizer steps (default {DEFAULT_MAX_STEPS} if no stop is given)."
    )
    max_tokens: int | None = opt(
        None, "Stop after this many training tokens (train icl: in-context points, points_seen)."
    )
    max_epochs: float | None = opt(None, "Stop after this many epochs.")
    max_time_seconds: float | None = opt(
        None,
        "Stop after this much wall time in this session (a resumed run gets it afresh and ends `time_limit` "
        "until its other limits are reached); with no other stop, the run's length.",
    )
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
        0.0,
        "Coefficient of the z-loss term z_loss * mean(log^2 Z) on the output softmax (PaLM; 1e-4 is usual).",
    )
    log_logits: bool = opt(
        True,
        "Each train row: max attention logit per layer and output-logit mean, max and log Z, from an "
        "extra forward of the logged micro-batch without gradients.",
        identity=False,
    )
    log_layer_stats: bool = opt(
        False,
        "Each train row: per layer, parameter norm, gradient norm (before clipping) and update/parameter RMS ratio.",
        identity=False,
    )
    log_step_losses: bool = opt(
        False,
        "Write every step's train_loss and grad_norm to step_losses.csv (read from the device at log "
        "points, so no extra sync).",
        identity=False,
    )
    keep_last: int | None = opt(None, "Keep only the newest N checkpoints (default: all).", identity=False)
    parallel: Literal["ddp", "fsdp"] = opt(
        "ddp",
        "Under torchrun: ddp replicates the model on every process; fsdp shards parameters, gradients and "
        "optimizer state over them (PyTorch's fully_shard).",
        identity=False,
    )
    spike_action: Literal["log", "checkpoint", "skip", "rollback", "stop"] = opt(
        "log",
        "On a loss spike (loss above mean + k*std of recent steps, or grad norm far above them on a log scale): "
        "log it to spikes.csv; also checkpoint the state before the update; skip the update; rollback to the "
        "last checkpoint and skip that data; or stop the run.",
    )
    spike_window: int = opt(128, "Recent steps whose loss and grad norm the spike test compares with.", cli=False)
    spike_sigma: float = opt(6.0, "k in mean + k*std: how far above recent steps a spike is.", cli=False)
    spike_min_history: int = opt(32, "Steps seen before any step can count as a spike.", cli=False)
    spike_max_rollbacks: int = opt(5, "Rollbacks (--spike-action rollback) before the run fails.", cli=False)
    spike_max_consecutive_skips: int = opt(
        64,
        "Spikes in a row (--spike-action skip) whose updates are dropped before the run fails.",
        cli=False,
        identity=False,
    )
    peak_flops: float | None = opt(
        None,
        "The device's peak FLOP/s for the mfu column (default: bf16 dense peak of known GPUs).",
        cli=False,
        identity=False,
    )

    def __post_init__(self) -> None:
        check_fields(self)
        check_at_least(self, ("keep_last", "spike_window", "spike_min_history", "spike_max_consecutive_skips"))
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
        check_at_least(self, ("eval_every", "max_bad_steps", "checkpoint_every"))
        if self.spike_action == "rollback" and self.checkpoint_every is None:
            raise ConfigError("--spike-action rollback goes back to the latest checkpoint: give --checkpoint-every")
        if self.max_epochs_between_evals is not None and self.max_epochs_between_evals <= 0:
            raise ConfigError(f"--max-epochs-between-evals must be positive, got {self.max_epochs_between_evals}")
        check_device_name(self.device)


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
            from tfkit.storage.uri import parse_s3_uri

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
