"""An ablation before it runs: its settings, skipped combinations, runs, columns and sizes.

`plan_ablation` does every check that can fail before anything is trained or written:
invalid combinations become `Skipped` entries with the reason, data that cannot be
opened too, and the parameter count of every setting is computed without allocating
its weights (on the meta device).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tfkit.ablate.grid import RunSpec, Setting, Skipped, expand, plan_runs
from tfkit.ablate.runner import results_columns
from tfkit.config import RunConfig
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
    base: RunConfig, axes: dict[str, list[Any]], *, num_runs: int, seed: int, runs_dir: str | Path
) -> AblationPlan:
    """Expand the grid, drop what cannot run (with reasons), and list every run.

    Raises ConfigError when no setting is left.
    """
    import torch

    from tfkit.data.loaders import open_source
    from tfkit.models.gpt import GPT

    settings, skipped = expand(base, axes)
    sources: dict[str, Any] = {}
    kept: list[Setting] = []
    has_optimum: dict[str, bool] = {}
    params: dict[str, tuple[int, int]] = {}
    for setting in settings:
        key = json.dumps(setting.config.to_dict()["data"], sort_keys=True)
        try:
            if key not in sources:
                sources[key] = open_source(setting.config.data, seed)
            source = sources[key]
            model = setting.config.model
            if model.vocab_size is not None and model.vocab_size < source.vocab_size:
                raise ConfigError(f"vocab_size {model.vocab_size} is smaller than the data's ({source.vocab_size})")
            updates = {"model.vocab_size": model.vocab_size or source.vocab_size}
            updates["model.max_seq_len"] = model.max_seq_len or setting.config.data.seq_len
            resolved = setting.config.with_updates(updates).model
            with torch.device("meta"):
                gpt = GPT(resolved)
            params[setting.setting_id] = (gpt.num_params(), gpt.num_params(non_embedding=True))
        except TfkitError as e:
            skipped.append(Skipped(values=setting.values, reason=str(e)))
            continue
        has_optimum[setting.setting_id] = bool(source.has_optimum)
        kept.append(setting)
    if not kept:
        reasons = "; ".join(sorted({s.reason for s in skipped})) or "no values given"
        raise ConfigError(f"no valid setting to train: {reasons}")
    varying = [k.split(".", 1)[1] for k, values in axes.items() if len(dict.fromkeys(values)) > 1]
    return AblationPlan(
        settings=kept,
        skipped=skipped,
        specs=plan_runs(kept, num_runs, seed, runs_dir),
        columns=results_columns(kept, has_optimum),
        params=params,
        varying=varying,
    )
