"""Statistics over the runs (seeds) of one setting: the centre (mean or median) and a band (std,
min-max range or 95% confidence interval of the mean) at each x, and bringing runs that log at
different x onto one grid so they can be averaged.
"""

from __future__ import annotations

from typing import Any

# two-sided 95% Student t quantiles for 1..30 degrees of freedom (normal beyond)
_T95 = (
    12.706,
    4.303,
    3.182,
    2.776,
    2.571,
    2.447,
    2.365,
    2.306,
    2.262,
    2.228,
    2.201,
    2.179,
    2.160,
    2.145,
    2.131,
    2.120,
    2.110,
    2.101,
    2.093,
    2.086,
    2.080,
    2.074,
    2.069,
    2.064,
    2.060,
    2.056,
    2.052,
    2.048,
    2.045,
    2.042,
)


def t95(n: int) -> float:
    """Half-width multiplier of a 95% CI of the mean of n values (std / sqrt(n) units)."""
    return _T95[n - 2] if 2 <= n <= 31 else 1.96


def aggregate(frame: Any, keys: list[str], value: str, agg: str, band: str) -> Any:
    """Per group of `keys`: centre, lo, hi and n over the rows (the seeds) of `value`."""
    import polars as pl

    v = pl.col(value)
    data = (
        frame.filter(v.is_not_null() & v.is_finite())
        if frame.schema[value].is_float()
        else frame.filter(v.is_not_null())
    )
    stats = data.group_by(keys, maintain_order=True).agg(
        v.mean().alias("mean"),
        v.median().alias("median"),
        v.std(ddof=1).fill_null(0.0).alias("std"),
        v.min().alias("min"),
        v.max().alias("max"),
        v.count().alias("n"),
    )
    centre = pl.col(agg)
    if band == "std":
        lo, hi = centre - pl.col("std"), centre + pl.col("std")
    elif band == "minmax":
        lo, hi = pl.col("min"), pl.col("max")
    elif band == "ci95":
        half = (
            pl.col("n").map_elements(t95, return_dtype=pl.Float64) * pl.col("std") / pl.col("n").cast(pl.Float64).sqrt()
        )
        lo, hi = centre - half, centre + half
    else:
        lo, hi = centre, centre
    return stats.with_columns(centre.alias("centre"), lo.alias("lo"), hi.alias("hi")).sort(keys)


def on_common_grid(part: Any, x: str, y: str) -> Any:
    """The rows of one setting with every run's `y` at the same `x` values, so seeds can be averaged.

    Runs that log at the same x (steps, tokens with one batch size) are returned as they are.
    Runs that log at different x (time, tokens across batch sizes) are each interpolated
    linearly onto one grid, the x values of all of them within the range every run covers;
    averaging them where they stand would zig-zag between seeds.
    """
    import numpy as np
    import polars as pl

    value = pl.col(y)
    keep = value.is_not_null() & pl.col(x).is_not_null()
    if part.schema[y].is_float():
        keep &= value.is_finite()
    if part.schema[x].is_float():
        keep &= pl.col(x).is_finite()
    data = part.filter(keep)
    if "run_id" not in data.columns or data.get_column("run_id").n_unique() < 2 or not part.schema[x].is_numeric():
        return part
    runs = (
        data.group_by("run_id", x, maintain_order=True)
        .agg(value.cast(pl.Float64).mean())
        .sort(x)
        .partition_by("run_id", maintain_order=True)
    )
    xs = [run.get_column(x).cast(pl.Float64).to_numpy() for run in runs]
    lo, hi = max(a[0] for a in xs), min(a[-1] for a in xs)
    inside = [a[(a >= lo) & (a <= hi)] for a in xs]
    if lo > hi or all(np.array_equal(inside[0], a) for a in inside[1:]):
        return part  # logged at the same x (or with no range in common)
    grid = np.unique(np.concatenate(inside))
    return pl.concat(
        [
            pl.DataFrame(
                {"run_id": [run["run_id"][0]] * len(grid), x: grid, y: np.interp(grid, a, run.get_column(y).to_numpy())}
            )
            for run, a in zip(runs, xs, strict=True)
        ]
    )
