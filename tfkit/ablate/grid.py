"""Settings grids: the cartesian product of swept values, invalid combinations, seeds and ids.

A *setting* is one full config (a `RunConfig`, or that of another experiment kind: see
`tfkit.ablate.kinds`); an ablation trains every setting `num_runs` times,
run `r` (0-based) with seed `seed + r`, so settings can be compared run by run. Every
sweepable config field (`sweep=True` in its `opt()`) can be swept: first-class options
(`--depth 4 8`) and any other field (`--sweep optim.beta2=0.95,0.99`) alike.

`count_runs` sizes a grid from its axes alone, so one too large to plan (beyond
`MAX_RUNS` unless asked) is refused before a single config is built.

Ids are content hashes, so the same command always gives the same ids:
`setting_id` hashes what is trained (the config's `identity` fields: not the seed,
device, output, or log / eval / checkpoint cadence, see `tfkit.config.opt`) and `run_id`
is `<setting_id>-s<seed>`. So `ablate --append` with another `--checkpoint-every` finds
the runs it already has.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tfkit.config import SECTIONS, SectionedConfig, section_of
from tfkit.errors import ConfigError


@dataclass(frozen=True)
class Setting:
    """One point of the grid."""

    setting_id: str
    values: dict[str, Any]  # the swept fields (bare names) and their values at this point
    config: SectionedConfig  # a RunConfig, or the config of another experiment kind


@dataclass(frozen=True)
class Skipped:
    """A combination of swept values that makes no valid config, and why."""

    values: dict[str, Any]
    reason: str


@dataclass(frozen=True)
class RunSpec:
    """One training run of an ablation."""

    setting: Setting
    run_num: int
    seed: int
    run_id: str
    config: SectionedConfig  # the setting's config with this run's seed and run directory
    # set by `ablate --overwrite`: the run starts afresh (its old directory replaced) unless
    # its directory was started by the ablation of this id (a job requeued mid-run resumes)
    overwrite_id: str | None = None


def sweepable_fields(sections: dict[str, type] = SECTIONS) -> dict[str, str]:
    """Bare field name -> section, for every field an ablation may sweep."""
    return {
        f.name: section
        for section, cls in sections.items()
        for f in dataclasses.fields(cls)
        if f.metadata.get("sweep", True)
    }


def sweep_key(name: str, sections: dict[str, type] = SECTIONS) -> str:
    """`section.field` for a bare or dotted field name; refuses fields that are not sweepable."""
    section, _, field = name.rpartition(".")
    field = field.strip()
    owner = section_of(field, "--sweep", sections)
    if section and section != owner:
        raise ConfigError(f"--sweep {name}: {field} belongs to section {owner!r}, not {section!r}")
    if field not in sweepable_fields(sections):
        hint = " (seeds come from --seed and --num-runs)" if field == "seed" else ""
        raise ConfigError(f"--sweep {name}: {field} describes how runs are executed and cannot be swept{hint}")
    return f"{owner}.{field}"


def parse_sweeps(items: list[str], sections: dict[str, type] = SECTIONS) -> dict[str, list[str]]:
    """`--sweep section.field=v1,v2` strings -> {"section.field": ["v1", "v2"]}."""
    axes: dict[str, list[str]] = {}
    for item in items:
        name, sep, values = item.partition("=")
        parts = [v.strip() for v in values.split(",") if v.strip()]
        if not sep or not name.strip() or not parts:
            raise ConfigError(f"--sweep expects section.field=v1,v2,..., got {item!r}")
        key = sweep_key(name.strip(), sections)
        axes.setdefault(key, []).extend(parts)
    return axes


def setting_id(config: SectionedConfig) -> str:
    """A stable short hash of what a config trains: its `identity` fields (not where, how fast, how
    often it logs, evaluates or saves, or with which seed)."""
    content = config.to_dict()
    for section, cls in config.SECTIONS.items():
        for f in dataclasses.fields(cls):
            if not f.metadata.get("identity", True):
                content[section].pop(f.name)
    text = json.dumps(content, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def count_runs(axes: dict[str, list[Any]], num_runs: int) -> int:
    """The runs of the grid before any config is built: the distinct values of every axis
    multiplied, times `num_runs`; `expand` may still skip some settings, never add one."""
    return math.prod(len(dict.fromkeys(values)) for values in axes.values()) * max(num_runs, 0)


def expand(base: SectionedConfig, axes: dict[str, list[Any]]) -> tuple[list[Setting], list[Skipped]]:
    """All settings of the grid, in the order the values were given, and the skipped ones.

    Args:
        base: the config every setting starts from (defaults, YAML, single-valued options).
        axes: `section.field` -> values (strings or typed); repeated values count once.
    """
    keys = list(axes)
    value_lists = [list(dict.fromkeys(axes[k])) for k in keys]
    settings: list[Setting] = []
    skipped: list[Skipped] = []
    seen: set[str] = set()
    for combo in itertools.product(*value_lists):
        try:
            config = base.with_updates(base.grid_updates(dict(zip(keys, combo, strict=True))), source="the grid")
        except ConfigError as e:
            raw = {k.split(".", 1)[1]: v for k, v in zip(keys, combo, strict=True)}
            skipped.append(Skipped(values=raw, reason=str(e)))
            continue
        flat = config.to_flat_dict()
        values = {k.split(".", 1)[1]: flat[k.split(".", 1)[1]] for k in keys}
        sid = setting_id(config)
        if sid in seen:  # e.g. two scales that round to the same shape, or "1e-3" and "0.001"
            raw = {k.split(".", 1)[1]: v for k, v in zip(keys, combo, strict=True)}
            skipped.append(Skipped(values=raw, reason="same model as an earlier setting"))
            continue
        seen.add(sid)
        settings.append(Setting(setting_id=sid, values=values, config=config))
    return settings, skipped


def plan_runs(settings: list[Setting], num_runs: int, seed: int, runs_dir: str | Path) -> list[RunSpec]:
    """Every (setting, run) pair, run-major: all settings' first runs come before any second run.

    So an ablation that stops early has compared every setting on the same seeds first.
    """
    if num_runs < 1:
        raise ConfigError(f"--num-runs must be at least 1, got {num_runs}")
    specs = []
    for run_num in range(num_runs):
        for setting in settings:
            run_seed = seed + run_num
            run_id = f"{setting.setting_id}-s{run_seed}"
            config = setting.config.with_updates(
                {"train.seed": run_seed, "log.out": str(Path(runs_dir) / run_id)}, source="the grid"
            )
            specs.append(RunSpec(setting=setting, run_num=run_num, seed=run_seed, run_id=run_id, config=config))
    return specs
