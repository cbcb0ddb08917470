"""Learning-rate sensitivity of an ablation over `--lr` (Wortsman et al. 2023, section 3.2).

For one model (one setting of everything but the learning rate), with final losses
l(lr) over a range of learning rates,

    LR sensitivity = mean over lr of min(l(lr), l_0) - min over lr of l(lr)

where l_0 is the loss at initialisation: a run that diverged (failed, a non-finite loss,
or a loss above l_0) counts as l_0, so it is shown and scored, not dropped. l_0 is
ln(vocab_size), the loss of the uniform prediction, which a model at tfkit's
initialisation (weights of std 0.02) is within a few hundredths of. The number is
computed per seed (runs are paired across learning rates by `run_num`) and reported
as the mean and sample std over seeds; 0 means every learning rate in the range reaches
the best loss.

`lr_sensitivity(frame)` takes an ablation's results (a polars frame, as
`tfkit.ablate.table.read_results` reads it, or a path) and returns one
`Sensitivity` per model; `tfkit ablate` prints them when it sweeps `--lr`, and
`clip_diverged` is what the `lr_sensitivity` plot template draws.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tfkit.ablate.analysis import final_rows, swept_columns
from tfkit.ablate.table import DONE_STATUSES, read_results
from tfkit.errors import DataError


@dataclass
class Sensitivity:
    """The LR sensitivity of one model over the learning rates of an ablation."""

    group: dict[str, Any]  # the values of the other swept columns: which model this is
    sensitivity: float  # mean over seeds
    std: float  # sample std over seeds (0 for one seed)
    best_loss: float  # the lowest seed-mean final loss over the learning rates
    best_lr: float
    initial_loss: float  # l_0, where diverged runs are clipped
    lrs: list[float] = field(default_factory=list)
    seeds: int = 0
    diverged: int = 0  # runs counted as l_0


def clip_diverged(frame: Any, metric: str = "val_loss") -> Any:
    """The last row of each run with `metric` clipped at the initial loss and a `diverged` column.

    A run diverged when it failed, its final `metric` is missing or not finite, or it is
    above the initial loss ln(vocab_size); its `metric` is then that initial loss.
    """
    import polars as pl

    for name in (metric, "vocab_size", "run_status", "run_id"):
        if name not in frame.columns:
            raise DataError(f"LR sensitivity needs a {name} column (the results of `tfkit ablate` on a language model)")
    finals = final_rows(frame)
    initial = pl.col("vocab_size").cast(pl.Float64).log()
    value = pl.col(metric).cast(pl.Float64)
    diverged = (
        (pl.col("run_status") == "failed") | value.is_null() | value.is_nan() | value.is_infinite() | (value > initial)
    ).fill_null(True)
    return finals.with_columns(
        diverged.alias("diverged"),
        initial.alias("initial_loss"),
        pl.when(diverged).then(initial).otherwise(value).alias(metric),
    )


def lr_sensitivity(results: Any, metric: str = "val_loss", group_by: list[str] | None = None) -> list[Sensitivity]:
    """The LR sensitivity of each model in an ablation's results (see the module docstring).

    Args:
        results: a results frame or the path of a results CSV.
        group_by: the columns that tell models apart (default: every swept setting column but `lr`).
    """
    import polars as pl

    if isinstance(results, (str, Path)):
        results = read_results(results)
    if "lr" not in results.columns or results.get_column("lr").n_unique() < 2:
        raise DataError("LR sensitivity needs results over at least two learning rates (ablate --lr A B ...)")
    # runs that ended (completed or failed); one still running or interrupted has no final loss yet
    finals = clip_diverged(results, metric).filter(pl.col("run_status").is_in(list(DONE_STATUSES)))
    if group_by is None:
        group_by = [c for c in swept_columns(results)[0] if c != "lr"]
    out: list[Sensitivity] = []
    if finals.is_empty():  # no run has ended yet (an ablation stopped before its first run ended)
        return out
    groups = finals.group_by(group_by, maintain_order=True) if group_by else [((), finals)]
    for key, part in groups:
        per_lr = part.group_by("lr").agg(pl.col(metric).mean()).drop_nulls(metric).sort("lr")
        if per_lr.is_empty():  # runs that failed before any evaluation: no loss to compare
            continue
        best = per_lr.row(per_lr.get_column(metric).arg_min(), named=True)
        by_seed = []
        for _, runs in part.group_by("run_num"):
            losses = runs.get_column(metric).to_list()
            if runs.get_column("lr").n_unique() == per_lr.height:  # this seed at every learning rate
                by_seed.append(statistics.fmean(losses) - min(losses))
        if not by_seed:
            continue
        out.append(
            Sensitivity(
                group=dict(zip(group_by, key if isinstance(key, tuple) else (key,), strict=False)),
                sensitivity=statistics.fmean(by_seed),
                std=statistics.stdev(by_seed) if len(by_seed) > 1 else 0.0,
                best_loss=best[metric],
                best_lr=best["lr"],
                initial_loss=float(part.get_column("initial_loss").max()),
                lrs=per_lr.get_column("lr").to_list(),
                seeds=len(by_seed),
                diverged=int(part.get_column("diverged").sum()),
            )
        )
    return out


def describe(s: Sensitivity) -> str:
    """One line per model, as `tfkit ablate` prints it."""
    model = ", ".join(f"{k}={v}" for k, v in s.group.items()) or "all runs"
    spread = f" ± {s.std:.4f}" if s.seeds > 1 else ""
    lrs = f"{min(s.lrs):g}..{max(s.lrs):g} ({len(s.lrs)} values)"
    diverged = f", {s.diverged} diverged run(s) at the initial loss {s.initial_loss:.3f}" if s.diverged else ""
    return (
        f"{model}: LR sensitivity {s.sensitivity:.4f}{spread} over lr {lrs}, {s.seeds} seed(s); "
        f"best {s.best_loss:.4f} at lr {s.best_lr:g}{diverged}"
    )
