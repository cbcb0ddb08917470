"""An ablation's results, read back: the last row of each run and the columns that make a setting.

Shared by what reads results files: the summaries and LR sensitivity `tfkit ablate`
prints (`tfkit.ablate.summary`, `tfkit.ablate.sensitivity`) and the pictures of
`tfkit plot` (`tfkit.plotting`). Frames are polars frames as `read_results` gives them.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from tfkit.ablate.kinds import KINDS
from tfkit.ablate.table import DONE_STATUSES, ID_COLUMNS


def final_rows(frame: Any) -> Any:
    """The last evaluation of every run."""
    import polars as pl

    if "step" in frame.columns:
        return frame.sort("step").group_by("run_id", maintain_order=True).last()
    return frame.group_by("run_id", maintain_order=True).agg(pl.all().last())


def finished_runs(frame: Any) -> Any:
    """The last row of every run that ended with a result (completed or failed)."""
    import polars as pl

    return final_rows(frame).filter(pl.col("run_status").is_in(list(DONE_STATUSES)))


# options whose unset default each run fills in (the warmup from the run's steps): their
# recorded value differs from the default without anyone having chosen it
RESOLVED_PER_RUN = ("warmup_steps",)


def swept_columns(frame: Any) -> tuple[list[str], dict[str, Any]]:
    """(swept, fixed): config columns that vary between runs, and fixed first-class options.

    Fixed values are those of command-line options that differ from their defaults (and the
    data), which is what a title needs to say.
    """
    swept: list[str] = []
    fixed: dict[str, Any] = {}
    # the config sections of every kind of run (language model, in-context regression, ...)
    classes = list(dict.fromkeys(cls for kind in KINDS.values() for cls in kind.sections.values()))
    seen: set[str] = set()
    for f in (f for cls in classes for f in dataclasses.fields(cls)):
        if (
            f.name in seen
            or f.name not in frame.columns
            or f.name in ID_COLUMNS
            or not f.metadata.get("identity", True)
        ):
            continue
        seen.add(f.name)
        values = frame.get_column(f.name).unique(maintain_order=True).to_list()
        if len(values) > 1:
            swept.append(f.name)
        elif (
            f.metadata.get("cli")
            and values[0] is not None
            and f.name not in RESOLVED_PER_RUN
            and (f.name in ("data", "task") or values[0] != f.default)
        ):
            fixed[f.name] = values[0]
    return swept, fixed
