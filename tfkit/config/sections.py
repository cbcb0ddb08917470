"""The sections of a pretraining run's config, one dataclass per concern: `ModelConfig`
(`tfkit.config.model`), `OptimConfig`, `DataConfig`, `TrainConfig` and `LogConfig` (`SECTIONS`).
Other kinds of run reuse them (`tfkit.config.icl`, `tfkit.config.finetune`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from tfkit.config.fields import (
    DEFAULT_MAX_STEPS,
    DEFAULT_WARMUP_STEPS,
    WARMUP_FRACTION,
    check_at_least,
    check_device_name,
    check_fields,
    opt,
    option_label,
)
from tfkit.config.model import ModelConfig
from tfkit.errors import ConfigError


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
