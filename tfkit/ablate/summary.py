"""Per-setting summaries of an ablation: mean and std over seeds of each run's final values."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any

METRICS = ("val_loss", "excess_loss", "time_s")


@dataclass
class SettingSummary:
    setting_id: str
    runs: int = 0  # finished runs (completed or failed)
    failed: int = 0
    num_params: int | None = None
    stats: dict[str, tuple[float, float]] = field(default_factory=dict)  # metric -> (mean, std)


def summarize(finals: list[dict[str, Any]], setting_ids: list[str]) -> list[SettingSummary]:
    """One summary per setting id (in the given order) from runs' final rows (`analysis.finished_runs`).

    Values may be numbers or CSV strings; empty, missing and non-finite ones are left out.
    The std is the sample standard deviation (0 for a single run).
    """
    summaries = {sid: SettingSummary(sid) for sid in setting_ids}
    values: dict[str, dict[str, list[float]]] = {sid: {m: [] for m in METRICS} for sid in setting_ids}
    for row in finals:
        summary = summaries.get(row["setting_id"])
        if summary is None:
            continue
        summary.runs += 1
        summary.failed += row.get("run_status") == "failed"
        if row.get("num_params") not in (None, ""):
            summary.num_params = int(row["num_params"])
        for metric in METRICS:
            number = _number(row.get(metric))
            if number is not None:
                values[row["setting_id"]][metric].append(number)
    for sid, summary in summaries.items():
        for metric, numbers in values[sid].items():
            if numbers:
                std = statistics.stdev(numbers) if len(numbers) > 1 else 0.0
                summary.stats[metric] = (statistics.fmean(numbers), std)
    return list(summaries.values())


def best_setting(summaries: list[SettingSummary], metric: str = "val_loss") -> str | None:
    """The setting id with the lowest mean of `metric`."""
    scored = [s for s in summaries if metric in s.stats]
    return min(scored, key=lambda s: s.stats[metric][0]).setting_id if scored else None


def _number(value: Any) -> float | None:
    if value is None or value == "":
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None
