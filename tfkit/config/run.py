"""Configs made of sections: `SectionedConfig`, the API every kind of run shares (overrides
by `section.field`, flat dicts, JSON, validation), and `RunConfig`, a pretraining run's.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Self

from tfkit.config.fields import (
    MAX_SHOWN,
    MEMORY_CHECK_FROM,
    coerce,
    format_bytes,
    option_label,
    read_yaml,
    shown,
    shown_text,
)
from tfkit.config.memory import MEMORY_ADVICE, device_memory, training_memory
from tfkit.config.model import ModelConfig, scaled_shape
from tfkit.config.presets import preset_updates
from tfkit.config.sections import SECTIONS, DataConfig, LogConfig, OptimConfig, TrainConfig
from tfkit.errors import ConfigError


class SectionedConfig:
    """The API shared by run configs made of named sections (`RunConfig`, the icl config).

    A subclass is a dataclass with one field per section and names its sections in the
    class attribute `SECTIONS` (field names unique across them); `train` (a `TrainConfig`)
    and `log` (a `LogConfig`) are always among them.
    """

    SECTIONS: ClassVar[dict[str, type]]
    # the fields (bare names) given explicitly to this config or those it was built from: a
    # preset leaves them as they are
    _given: ClassVar[frozenset[str]] = frozenset()
    # what a recorded config (a checkpoint's, a train_config.json) lacking these fields trained with:
    # a field it lacks did not exist when it was written, and then every run had this value
    STORED_DEFAULTS: ClassVar[dict[str, Any]] = {
        "model.positions": "learned",
        "model.norm": "layernorm",
        "model.activation": "gelu",
        "model.qk_norm": False,
        "optim.optimizer": "adamw",
        "optim.muon_ns_steps": 5,
        "optim.ema_decay": 0.0,
    }

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

    @classmethod
    def from_stored(cls, data: dict[str, Any], *, source: str = "config") -> Self:
        """Build from a config a run recorded (nested by section): the fields of its sections that it
        lacks take `STORED_DEFAULTS`, what runs written before those fields existed trained with."""
        filled = {key: dict(value) if isinstance(value, dict) else value for key, value in data.items()}
        for key, value in cls.STORED_DEFAULTS.items():
            section, name = key.split(".", 1)
            if isinstance(filled.get(section), dict):
                filled[section].setdefault(name, value)
        return cls.from_dict(filled, source=source)

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
        given = self._given | touched
        self._derive(nested, touched, given)
        config = type(self)(**{section: sections[section](**values) for section, values in nested.items()})
        config._given = given  # type: ignore[misc]
        return config

    def _derive(self, nested: dict[str, dict[str, Any]], touched: set[str], given: frozenset[str]) -> None:
        """Set the fields that others given derive: `--model-scale`'s depth and width, and `--mixer ssm`'s
        learned positions without qk-norm (it has no attention), unless those are given too."""
        if "model" in nested:
            _apply_model_scale(nested["model"], touched)
            if nested["model"]["mixer"] == "ssm":
                for name, value in (("positions", "learned"), ("qk_norm", False)):
                    if name not in given:
                        nested["model"][name] = value

    @classmethod
    def from_yaml(cls, path: str | Path) -> Self:
        """Load a YAML file (nested by section, or flat field names)."""
        return cls().with_yaml(path)

    def with_yaml(self, path: str | Path) -> Self:
        """A copy with the options of a YAML (or JSON) file.

        A run's `train_config.json` is such a file: its `meta` record (versions, device,
        parameter counts) is no option and is left out.
        """
        path = Path(path)
        data = read_yaml(path)
        if data is None:
            return self
        if not isinstance(data, dict):
            raise ConfigError(f"{path} must hold a mapping of options, got {type(data).__name__}")
        if isinstance(data.get("meta"), dict) and "meta" not in self.SECTIONS:
            data = {k: v for k, v in data.items() if k != "meta"}
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

    def _derive(self, nested: dict[str, dict[str, Any]], touched: set[str], given: frozenset[str]) -> None:
        """As every config does, and a newly given `--preset` sets its options that were not given."""
        preset = nested["model"]["preset"]
        if preset is not None and "preset" in touched:
            for key, value in preset_updates(preset, given).items():
                section, name = key.split(".", 1)
                nested[section][name] = value
        super()._derive(nested, touched, given)

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
