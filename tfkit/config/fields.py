"""Config fields and their values: `opt` (a field with its help text, command-line flag and
whether it is swept and part of a setting's identity), the checks every section runs on its
values (finite floats, seeds and shapes in range), `coerce` (text from `--set` or YAML to a
field's type) and `read_yaml` (small YAML files without alias bombs).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import field
from pathlib import Path
from typing import Any, Literal

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
# `--mixer ssm`: steps per chunk of the scan, so the (chunk x chunk) decay matrices per channel stay small
SSM_CHUNK = 16
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


def redefault(section: type, name: str, default: Any) -> Any:
    """`section`'s field `name` with another default (its help and flags kept): a subclass's own recipe."""
    base = next(f for f in dataclasses.fields(section) if f.name == name)
    return field(default=default, metadata=base.metadata)


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


def check_at_least(section: Any, names: tuple[str, ...], bound: int = 1) -> None:
    """Refuse a value of the fields `names` below `bound` (an unset field, None, passes)."""
    for name in names:
        value = getattr(section, name)
        if value is not None and value < bound:
            raise ConfigError(f"{field_label(section, name)} must be at least {bound}, got {value}")


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


def coerce(value: Any, hint: Any, name: str) -> Any:
    """Convert a YAML value or command-line string to a field's declared type."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "null", "")):
            return None
        for kind in inner[:-1]:  # `float | str`: the first type that takes the value
            try:
                return coerce(value, kind, name)
            except ConfigError:
                pass
        return coerce(value, inner[-1], name)
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


def check_device_name(name: str) -> None:
    """Refuse a `--device` that is not auto, cpu, cuda, cuda:N or mps (whether it is here: `resolve_device`)."""
    if not (name in ("auto", "cpu", "cuda", "mps") or (name.startswith("cuda:") and name[5:].isdigit())):
        raise ConfigError(f"--device must be auto, cpu, cuda, cuda:N or mps, got {shown(name)}")
