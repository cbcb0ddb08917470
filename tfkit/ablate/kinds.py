"""Experiment kinds: what `ablate` needs to know to sweep one kind of training run.

A kind names its config class (a `SectionedConfig`: its sections give the sweepable
fields and the setting columns), its train function (`train(config, callback=,
overwrite=)` returning a `RunResult`), how to check one setting before anything runs
(parameter count, facts that decide the columns) and the metric columns of its
`val_log.csv`. The grid, plan, runner and results file are the same for every kind;
`kind_of(config)` picks the kind from the config's class.

- `lm`: `tfkit train pretrain` (RunConfig, tfkit.training.loop.train).
- `icl`: `tfkit train icl` (IclRunConfig, tfkit.training.icl.train_icl).

Nothing here imports torch until a setting is checked or a run starts.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tfkit.config import RunConfig, SectionedConfig
from tfkit.config.icl import IclRunConfig


@dataclass(frozen=True)
class SettingInfo:
    """What checking a setting found: its parameter counts and what its log columns depend on."""

    num_params: int
    num_params_non_embedding: int
    facts: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ExperimentKind:
    name: str
    config_class: type[SectionedConfig]
    train_function: str  # "module:function", imported when a run starts
    # (config, seed, cache) -> SettingInfo; raises TfkitError for a setting that cannot run.
    # `cache` is shared by the settings of one plan (e.g. opened data sources).
    inspect: Callable[[Any, int, dict[str, Any]], SettingInfo]
    # [(config, info)] of the kept settings -> the val_log.csv columns the results file needs
    val_columns: Callable[[list[tuple[Any, SettingInfo]]], list[str]]

    @property
    def sections(self) -> dict[str, type]:
        return self.config_class.SECTIONS

    def train(self) -> Callable[..., Any]:
        module, _, name = self.train_function.partition(":")
        return getattr(importlib.import_module(module), name)


def _lm_inspect(config: RunConfig, seed: int, cache: dict[str, Any]) -> SettingInfo:
    import torch

    from tfkit.data.loaders import open_source
    from tfkit.errors import ConfigError
    from tfkit.models.gpt import GPT

    key = json.dumps(config.to_dict()["data"], sort_keys=True)
    if key not in cache:
        cache[key] = open_source(config.data, seed)
    source = cache[key]
    model = config.model
    if model.vocab_size is not None and model.vocab_size < source.vocab_size:
        raise ConfigError(f"vocab_size {model.vocab_size} is smaller than the data's ({source.vocab_size})")
    updates = {"model.vocab_size": model.vocab_size or source.vocab_size}
    updates["model.max_seq_len"] = model.max_seq_len or config.data.seq_len
    resolved = config.with_updates(updates).model
    with torch.device("meta"):  # counts parameters without allocating them
        gpt = GPT(resolved)
    facts = {"has_optimum": bool(source.has_optimum), "seq_len": config.data.seq_len}
    return SettingInfo(gpt.num_params(), gpt.num_params(non_embedding=True), facts)


def _lm_val_columns(settings: list[tuple[RunConfig, SettingInfo]]) -> list[str]:
    from tfkit.training.columns import pretrain_columns

    # per-position columns up to the longest seq_len, of a setting with a known optimum if any
    _, info = max(settings, key=lambda s: (s[1].facts["has_optimum"], s[1].facts["seq_len"]))
    return pretrain_columns(info.facts["seq_len"], info.facts["has_optimum"])[1]


def _icl_inspect(config: IclRunConfig, seed: int, cache: dict[str, Any]) -> SettingInfo:
    import torch

    from tfkit.training.icl import build_model

    resolved = config.resolved()
    with torch.device("meta"):
        model = build_model(resolved)
    facts = {"n_points": resolved.task.n_points, "eval_loops": resolved.loop.scored_loops}
    return SettingInfo(model.num_params(), model.num_params(non_embedding=True), facts)


def _icl_val_columns(settings: list[tuple[IclRunConfig, SettingInfo]]) -> list[str]:
    from tfkit.training.columns import icl_columns

    n_points = max(info.facts["n_points"] for _, info in settings)
    eval_loops = max(info.facts["eval_loops"] for _, info in settings)
    return icl_columns(n_points, eval_loops)[1]


KINDS: dict[str, ExperimentKind] = {
    "lm": ExperimentKind("lm", RunConfig, "tfkit.training.loop:train", _lm_inspect, _lm_val_columns),
    "icl": ExperimentKind("icl", IclRunConfig, "tfkit.training.icl:train_icl", _icl_inspect, _icl_val_columns),
}


def kind_of(config: SectionedConfig) -> ExperimentKind:
    """The kind whose config class `config` is."""
    for kind in KINDS.values():
        if type(config) is kind.config_class:
            return kind
    raise TypeError(f"no experiment kind for {type(config).__name__}")
