"""An ablation before it runs: its settings, skipped combinations, runs, columns and sizes.

`plan_ablation` does every check that can fail before anything is trained or written:
invalid combinations become `Skipped` entries with the reason, data that cannot be
opened too, and the parameter count of every setting is computed without allocating
its weights (on the meta device). What a setting needs checked depends on its
experiment kind (`tfkit.ablate.kinds`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tfkit.ablate.defaults import MAX_RUNS
from tfkit.ablate.grid import RunSpec, Setting, Skipped, count_runs, expand, plan_runs
from tfkit.ablate.kinds import SettingInfo, kind_of
from tfkit.ablate.run import results_columns
from tfkit.config import SectionedConfig
from tfkit.errors import ConfigError, TfkitError


@dataclass
class AblationPlan:
    settings: list[Setting]
    skipped: list[Skipped]
    specs: list[RunSpec]
    columns: list[str]
    params: dict[str, tuple[int, int]]  # setting_id -> (num_params, num_params_non_embedding)
    varying: list[str]  # swept fields with more than one value: what tells settings apart


def plan_ablation(
    base: SectionedConfig,
    axes: dict[str, list[Any]],
    *,
    num_runs: int,
    seed: int,
    runs_dir: str | Path,
    max_runs: int | None = MAX_RUNS,
) -> AblationPlan:
    """Expand the grid, drop what cannot run (with reasons), and list every run.

    The experiment kind (language model, in-context regression, ...) is that of `base`.
    Raises ConfigError when no setting is left, or before anything is expanded when the
    grid has more than `max_runs` runs (None: no bound).
    """
    total = count_runs(axes, num_runs)
    if max_runs is not None and total > max_runs:
        settings = total // num_runs
        each = f"{settings:,} setting{'s' if settings != 1 else ''} x {num_runs:,} run{'s' if num_runs != 1 else ''}"
        raise ConfigError(
            f"the grid has {total:,} runs ({each} each), more than "
            f"--max-runs {max_runs:,}: sweep fewer values or pass --max-runs {total} to plan them all"
        )
    kind = kind_of(base)
    settings, skipped = expand(base, axes)
    cache: dict[str, Any] = {}
    kept: list[Setting] = []
    infos: dict[str, SettingInfo] = {}
    for setting in settings:
        try:
            infos[setting.setting_id] = kind.inspect(setting.config, seed, cache)
        except TfkitError as e:
            skipped.append(Skipped(values=setting.values, reason=str(e)))
            continue
        kept.append(setting)
    if not kept:
        reasons = "; ".join(sorted({s.reason for s in skipped})) or "no values given"
        raise ConfigError(f"no valid setting to train: {reasons}")
    varying = [k.split(".", 1)[1] for k, values in axes.items() if len(dict.fromkeys(values)) > 1]
    val_columns = kind.val_columns([(s.config, infos[s.setting_id]) for s in kept])
    return AblationPlan(
        settings=kept,
        skipped=skipped,
        specs=plan_runs(kept, num_runs, seed, runs_dir),
        columns=results_columns(kept, val_columns),
        params={sid: (info.num_params, info.num_params_non_embedding) for sid, info in infos.items()},
        varying=varying,
    )
