"""Typed configuration of `tfkit train sft` and `tfkit train dpo`.

`SftRunConfig` and `DpoRunConfig` have the API of `tfkit.config.RunConfig` (both are
`SectionedConfig`s) and reuse its `train` and `log` sections, and its `optim` section with AdamW and no weight
average by default (`FinetuneOptimConfig`). They add

- `data` (`ChatDataConfig`): the tokenized SFT or DPO folder and the batch shape,
- `sft` (`SftConfig`): the model to start from (`--init`) and `--packing`,
- `dpo` (`DpoConfig`): `--init`, the reference (`--ref`), `--beta`, `--label-smoothing`,
  `--loss-type` and `--precompute-ref`.

The `model` section is not an option: it is read from the `--init` checkpoint and saved
with the run, so the run can itself be an `--init` (pretrain -> sft -> dpo).

This module imports no torch, so the CLI can build options from it at `--help` time.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar, Literal

from tfkit.config.fields import DEFAULT_MAX_STEPS, check_at_least, check_fields, opt, redefault
from tfkit.config.memory import training_memory
from tfkit.config.run import SectionedConfig
from tfkit.config.sections import LogConfig, ModelConfig, OptimConfig, TrainConfig
from tfkit.errors import ConfigError


@dataclass(kw_only=True)
class FinetuneOptimConfig(OptimConfig):
    """`OptimConfig` with fine-tuning's optimizer: AdamW on every parameter, no weight average."""

    optimizer: Literal["adamw", "muon"] = redefault(OptimConfig, "optimizer", "adamw")
    ema_decay: float = redefault(OptimConfig, "ema_decay", 0.0)


@dataclass(kw_only=True)
class ChatDataConfig:
    """Token-id datasets written by `tfkit tokenizer tokenize --mode sft|dpo`."""

    SECTION: ClassVar[str] = "data"

    data: str | None = opt(None, "Folder written by `tfkit tokenizer tokenize --mode sft` (or --mode dpo).")
    seq_len: int | None = opt(
        None,
        "Tokens of context per sequence; longer examples are cut (default: the longest example, "
        "at most the --init model's context; with --packing: the model's context).",
    )
    batch_size: int = opt(16, "Examples (packed rows with --packing; preference pairs for DPO) per micro-batch.")
    val_examples: int = opt(1024, "Validation examples scored at each evaluation (the first N).", cli=False)

    def __post_init__(self) -> None:
        check_fields(self)
        check_at_least(self, ("seq_len", "batch_size", "val_examples"))


@dataclass(kw_only=True)
class SftConfig:
    """Supervised fine-tuning: next-token loss on the response tokens only."""

    SECTION: ClassVar[str] = "sft"

    init: str | None = opt(None, "Run directory (its latest checkpoint) or checkpoint file to start from.", sweep=False)
    packing: bool = opt(False, "Pack several examples per sequence; each attends only inside itself.")

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass(kw_only=True)
class DpoConfig:
    """Direct preference optimisation against a frozen reference model."""

    SECTION: ClassVar[str] = "dpo"

    init: str | None = opt(None, "Run directory (its latest checkpoint) or checkpoint file to start from.", sweep=False)
    ref: str | None = opt(
        None, "Reference model: run directory or checkpoint (default: the --init model).", sweep=False
    )
    beta: float = opt(0.1, "Strength of the KL penalty towards the reference (DPO's beta).")
    label_smoothing: float = opt(0.0, "Sigmoid loss: assumed probability that a preference label is flipped.")
    loss_type: Literal["sigmoid", "ipo", "hinge"] = opt("sigmoid", "Preference loss.")
    precompute_ref: bool = opt(
        False, "Compute the reference log-probabilities once before training, not at every step."
    )

    def __post_init__(self) -> None:
        check_fields(self)
        if self.beta <= 0:
            raise ConfigError(f"--beta must be positive, got {self.beta}")
        if not 0.0 <= self.label_smoothing < 0.5:
            raise ConfigError(f"--label-smoothing must be in [0, 0.5), got {self.label_smoothing}")
        if self.label_smoothing and self.loss_type != "sigmoid":
            raise ConfigError(f"--label-smoothing applies to --loss-type sigmoid, not {self.loss_type}")


# the sections a command turns into options (the model comes from --init)
SFT_OPTION_SECTIONS: dict[str, type] = {
    "sft": SftConfig,
    "data": ChatDataConfig,
    "optim": FinetuneOptimConfig,
    "train": TrainConfig,
    "log": LogConfig,
}
DPO_OPTION_SECTIONS: dict[str, type] = {
    "dpo": DpoConfig,
    "data": ChatDataConfig,
    "optim": FinetuneOptimConfig,
    "train": TrainConfig,
    "log": LogConfig,
}


class _FinetuneConfig(SectionedConfig):
    """What SFT and DPO configs share: resolution against the --init model."""

    kind: ClassVar[str]

    @property
    def objective(self) -> Any:
        return getattr(self, self.kind)

    def resolved(self, model: ModelConfig, seq_len: int) -> Any:
        """The model of --init, the sequence length the data needs, the default stop and run directory.

        Refuses (ConfigError) a run that cannot fit in its device's memory.
        """
        updates: dict[str, Any] = {"model": dataclasses.asdict(model), "data.seq_len": seq_len}
        if not self.has_stop_criterion():
            updates["train.max_steps"] = DEFAULT_MAX_STEPS
        if self.log.out is None:
            stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
            updates["log.out"] = f"runs/{self.kind}-{Path(self.data.data or 'data').name}-{stamp}"
        config = self.with_updates(updates)
        config.check_memory()
        return config

    def memory_parts(self, accelerator: bool) -> dict[str, int]:
        if self.data.seq_len is None:  # known once the data is read
            return {}
        # DPO scores a chosen and a rejected response per pair; SFT packing adds a (T, T) mask per row
        rows = self.data.batch_size * (2 if self.kind == "dpo" else 1)
        parts = training_memory(
            self.model, rows, self.data.seq_len, accelerator=accelerator, precision=self.train.precision
        )
        if self.kind == "sft" and self.sft.packing:  # type: ignore[attr-defined]
            parts["activations"] += rows * self.data.seq_len**2
        if self.kind == "dpo" and not self.dpo.precompute_ref:  # type: ignore[attr-defined]
            parts["model"] += 4 * sum(self.model.size())  # the frozen reference model
        return parts

    def batch_shape(self) -> str:
        return f"--batch-size {self.data.batch_size} x --seq-len {self.data.seq_len} ({self.model.describe()})"

    def check_inputs(self) -> None:
        if not self.objective.init:
            raise ConfigError(
                f"--init is required: the run directory or checkpoint `tfkit train {self.kind}` starts from"
            )
        if not self.data.data:
            raise ConfigError(f"--data is required: a folder written by `tfkit tokenizer tokenize --mode {self.kind}`")
        if self.kind == "dpo" and self.train.z_loss > 0:
            raise ConfigError(
                "--z-loss applies to `train pretrain` and `train sft`: the DPO loss compares sequence "
                "log-probabilities and adds no softmax term to regularise"
            )


@dataclass(kw_only=True)
class SftRunConfig(_FinetuneConfig):
    """Everything one SFT run needs; saved as `train_config.json` in the run directory."""

    SECTIONS: ClassVar[dict[str, type]] = {"model": ModelConfig, **SFT_OPTION_SECTIONS}
    kind: ClassVar[str] = "sft"

    model: ModelConfig = field(default_factory=ModelConfig)
    sft: SftConfig = field(default_factory=SftConfig)
    data: ChatDataConfig = field(default_factory=ChatDataConfig)
    optim: FinetuneOptimConfig = field(default_factory=FinetuneOptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    log: LogConfig = field(default_factory=LogConfig)


@dataclass(kw_only=True)
class DpoRunConfig(_FinetuneConfig):
    """Everything one DPO run needs; saved as `train_config.json` in the run directory."""

    SECTIONS: ClassVar[dict[str, type]] = {"model": ModelConfig, **DPO_OPTION_SECTIONS}
    kind: ClassVar[str] = "dpo"

    model: ModelConfig = field(default_factory=ModelConfig)
    dpo: DpoConfig = field(default_factory=DpoConfig)
    data: ChatDataConfig = field(default_factory=ChatDataConfig)
    optim: FinetuneOptimConfig = field(default_factory=FinetuneOptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    log: LogConfig = field(default_factory=LogConfig)
