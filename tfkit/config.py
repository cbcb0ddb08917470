"""Typed run configuration: the single source of truth for option names.

A `RunConfig` is composed of one dataclass per concern (`model`, `optim`, `data`,
`train`, `log`). Every field has a default and a help string (its `help` metadata),
and fields marked `cli=True` become first-class command-line options: field `num_heads`
is option `--num-heads`, CSV column `num_heads` and wandb config key `num_heads`. Any
other field is reachable with `--set section.field=value` or a YAML file. Field names
are unique across sections, so the flat form (`to_flat_dict`) needs no prefixes.

Adding an option to `train pretrain` (and later to `ablate`) means adding one field here.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, Self

from tfkit.errors import ConfigError

DEFAULT_MAX_STEPS = 1000


def opt(
    default: Any = dataclasses.MISSING, help: str = "", *, cli: bool = True, sweep: bool = True, **kw: Any
) -> Any:
    """A dataclass field with help text.

    `cli=True` makes it a first-class CLI option (several values at once in `tfkit ablate`);
    `sweep=False` marks fields that describe where or how a run is executed rather than
    what is trained (seed, device, output paths), which `ablate` never sweeps.
    """
    return field(default=default, metadata={"help": help, "cli": cli, "sweep": sweep}, **kw)


def option_label(name: str) -> str:
    """The CLI spelling of a field name, used in error messages: num_heads -> --num-heads."""
    return "--" + name.replace("_", "-")


@dataclass(kw_only=True)
class ModelConfig:
    """The GPT family: sizes, block kind, activation, norm and positions."""

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
        for name in ("depth", "width", "num_heads"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{option_label(name)} must be at least 1, got {getattr(self, name)}")
        if self.width % self.num_heads:
            raise ConfigError(f"--num-heads ({self.num_heads}) must divide --width ({self.width})")
        if self.positions == "rotary" and (self.width // self.num_heads) % 2:
            raise ConfigError(
                f"--positions rotary needs an even head size; --width {self.width} / "
                f"--num-heads {self.num_heads} = {self.width // self.num_heads}"
            )
        if self.mlp_ratio <= 0:
            raise ConfigError(f"--mlp-ratio must be positive, got {self.mlp_ratio}")
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

    @property
    def true_model_scale(self) -> float:
        """The scale whose unrounded shape has this model's depth * width^2 (its parameter count)."""
        return true_model_scale(self.depth, self.width, self.scale_base_depth, self.scale_base_width)


def scaled_shape(scale: float, base_depth: int, base_width: int) -> tuple[int, int]:
    """(depth, width) at `scale`: both grow with log2(1 + scale); width rounded to a multiple of 64."""
    if not scale > 0:
        raise ConfigError(f"--model-scale must be positive, got {scale}")
    factor = math.log2(1.0 + scale)
    width = max(64, round(base_width * factor / 64) * 64)
    depth = max(1, round(base_depth * factor))
    return depth, width


def true_model_scale(depth: int, width: int, base_depth: int, base_width: int) -> float:
    """Inverse of `scaled_shape` without rounding, matched on depth * width^2."""
    factor = ((depth / base_depth) * (width / base_width) ** 2) ** (1.0 / 3.0)
    return 2.0**factor - 1.0


@dataclass(kw_only=True)
class OptimConfig:
    """AdamW with decoupled weight decay and a warmup + decay learning-rate schedule."""

    lr: float = opt(3e-3, "Peak learning rate.")
    schedule: Literal["cosine", "linear", "constant"] = opt("cosine", "Decay after warmup.")
    warmup_steps: int = opt(50, "Linear warmup steps.")
    min_lr_ratio: float = opt(0.1, "Final learning rate as a fraction of --lr.")
    weight_decay: float = opt(0.1, "Decoupled weight decay (not on norms, biases, embeddings).")
    beta1: float = opt(0.9, "AdamW beta1.")
    beta2: float = opt(0.99, "AdamW beta2.")
    eps: float = opt(1e-8, "AdamW epsilon.", cli=False)
    grad_clip: float = opt(1.0, "Clip the global gradient norm to this value (0 disables).")
    grad_accum_steps: int = opt(1, "Micro-batches accumulated per optimizer step.")
    decay_embeddings: bool = opt(False, "Apply weight decay to embeddings too.", cli=False)
    decay_norms_and_biases: bool = opt(False, "Apply weight decay to norms and biases too.", cli=False)

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ConfigError(f"--lr must be positive, got {self.lr}")
        if self.warmup_steps < 0:
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
    val_sequences: int = opt(4096, "Synthetic data: sequences in the validation set.", cli=False)
    val_seed: int = opt(1234, "Seed of the validation set (the same for every run).", cli=False)

    def __post_init__(self) -> None:
        for name in ("seq_len", "batch_size", "train_sequences", "val_sequences"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{option_label(name)} must be at least 1, got {getattr(self, name)}")
        if not self.data:
            raise ConfigError("--data must not be empty")


@dataclass(kw_only=True)
class TrainConfig:
    """Stop criteria, evaluation cadence, device, precision and seed."""

    max_steps: int | None = opt(None, f"Stop after this many optimizer steps (default {DEFAULT_MAX_STEPS} if no stop is given).")
    max_tokens: int | None = opt(None, "Stop after this many training tokens.")
    max_epochs: float | None = opt(None, "Stop after this many epochs.")
    max_time_seconds: float | None = opt(None, "Stop after this much wall time.")
    eval_every: int = opt(100, "Evaluate every N steps (and always at the end).")
    max_epochs_between_evals: float | None = opt(None, "Evaluate at least this often, in epochs.")
    checkpoint_every: int | None = opt(None, "Save a checkpoint every N steps (always at the end).")
    seed: int = opt(0, "Seed for python, numpy and torch.", sweep=False)
    device: str = opt("auto", "auto, cpu, cuda, cuda:N or mps.", sweep=False)
    compile: Literal["auto", "on", "off"] = opt("auto", "torch.compile the model (auto: on CUDA only).")
    precision: Literal["auto", "bf16", "fp32"] = opt("auto", "auto: bf16 autocast on CUDA, fp32 elsewhere.")
    max_bad_steps: int = opt(10, "Consecutive non-finite steps that fail the run.", cli=False)

    def __post_init__(self) -> None:
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
            raise ConfigError(f"--device must be auto, cpu, cuda, cuda:N or mps, got {dev!r}")


@dataclass(kw_only=True)
class LogConfig:
    """Where the run directory goes and what it logs to."""

    out: str | None = opt(None, "Run directory (default runs/<data>-<timestamp>).", sweep=False)
    log_every: int = opt(10, "Log a train row every N steps.", sweep=False)
    wandb_project: str | None = opt(None, "Also log to this wandb project.", sweep=False)
    wandb_entity: str | None = opt(None, "wandb entity (user or team).", cli=False, sweep=False)
    wandb_group: str | None = opt(None, "wandb group of the run (ablate: one per ablation).", cli=False, sweep=False)
    s3_uri: str | None = opt(
        None, "Push the run directory to <this prefix>/<run name> at the end (s3://bucket/prefix).", sweep=False
    )
    s3_every_checkpoint: bool = opt(
        False, "With --s3-uri: also push after each --checkpoint-every checkpoint, in the background.", sweep=False
    )

    def __post_init__(self) -> None:
        if self.log_every < 1:
            raise ConfigError(f"--log-every must be at least 1, got {self.log_every}")
        if self.s3_uri is not None:
            from tfkit.storage.s3 import parse_s3_uri

            parse_s3_uri(self.s3_uri, "--s3-uri")
        if self.s3_every_checkpoint and self.s3_uri is None:
            raise ConfigError("--s3-every-checkpoint needs --s3-uri")


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
            if key in sections and isinstance(value, dict):
                for name, sub in value.items():
                    touched.add(_assign(nested, key, name, sub, source, sections))
            elif "." in key:
                section, name = key.split(".", 1)
                if section not in sections:
                    raise ConfigError(f"unknown section {section!r} in {source}: expected one of {', '.join(sections)}")
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
        import yaml

        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            raise ConfigError(f"{path} is not valid YAML: {str(e).splitlines()[0]}") from None
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
                raise ConfigError(f"--set expects section.field=value, got {item!r}")
            updates[key.strip()] = value.strip()
        return self.with_updates(updates, source="--set")

    def save_json(self, path: str | Path) -> None:
        from tfkit.io import write_json_atomic

        write_json_atomic(path, self.to_dict())

    @classmethod
    def load_json(cls, path: str | Path) -> Self:
        return cls.from_dict(json.loads(Path(path).read_text()), source=str(path))


@dataclass(kw_only=True)
class RunConfig(SectionedConfig):
    """Everything one training run needs; saved as `train_config.json` in the run directory."""

    SECTIONS: ClassVar[dict[str, type]] = SECTIONS

    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    log: LogConfig = field(default_factory=LogConfig)


def field_names(section: str, sections: dict[str, type] = SECTIONS) -> list[str]:
    return [f.name for f in dataclasses.fields(sections[section])]


def section_of(name: str, source: str = "config", sections: dict[str, type] = SECTIONS) -> str:
    """The section that owns a bare field name."""
    for section in sections:
        if name in field_names(section, sections):
            return section
    every = [n for s in sections for n in field_names(s, sections)]
    hint = difflib.get_close_matches(name, every, n=1)
    suffix = f" (did you mean {hint[0]!r}?)" if hint else ""
    raise ConfigError(f"unknown option {name!r} in {source}{suffix}")


def _assign(
    nested: dict[str, dict[str, Any]], section: str, name: str, value: Any, source: str, sections: dict[str, type]
) -> str:
    cls = sections[section]
    fields = {f.name: f for f in dataclasses.fields(cls)}
    if name not in fields:
        hint = difflib.get_close_matches(name, list(fields), n=1)
        suffix = f" (did you mean {hint[0]!r}?)" if hint else ""
        raise ConfigError(f"unknown option {section}.{name} in {source}{suffix}")
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
        if value not in args:
            raise ConfigError(f"{name} must be one of {', '.join(map(str, args))}, got {value!r}")
        return value
    if origin is dict:
        if isinstance(value, str):
            pairs = [p for p in value.split(",") if p.strip()]
            value = dict(p.split("=", 1) for p in pairs if "=" in p)
        if not isinstance(value, dict):
            raise ConfigError(f"{name} must be a mapping, got {value!r}")
        return {str(k): coerce(v, args[1], f"{name}.{k}") for k, v in value.items()}
    if hint is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("true", "1", "yes", "on"):
            return True
        if text in ("false", "0", "no", "off"):
            return False
        raise ConfigError(f"{name} must be true or false, got {value!r}")
    if hint is int:
        if isinstance(value, bool):
            raise ConfigError(f"{name} must be an integer, got {value!r}")
        if isinstance(value, int):
            return value
        try:
            number = float(str(value).replace("_", ""))
        except ValueError:
            raise ConfigError(f"{name} must be an integer, got {value!r}") from None
        if not number.is_integer():
            raise ConfigError(f"{name} must be an integer, got {value!r}")
        return int(number)
    if hint is float:
        if isinstance(value, bool):
            raise ConfigError(f"{name} must be a number, got {value!r}")
        try:
            return float(str(value).replace("_", "")) if not isinstance(value, (int, float)) else float(value)
        except ValueError:
            raise ConfigError(f"{name} must be a number, got {value!r}") from None
    if hint is str:
        return str(value)
    raise TypeError(f"no conversion for {name}: {hint}")
