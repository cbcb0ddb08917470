"""Drawing a template: seeds aggregated per setting, one colour per setting, a band over seeds.

`render(frame, template)` returns a matplotlib Figure (nothing is shown or saved here).
Every statistic is computed over the runs (seeds) of one setting at the same x: the
centre is their mean (or median) and the band their std, min-max range or 95% confidence
interval of the mean.
"""

from __future__ import annotations

import dataclasses
import math
import re
import textwrap
from typing import Any

from tfkit.errors import DataError
from tfkit.plotting.data import position_columns, setting_columns
from tfkit.plotting.templates import Template

# two-sided 95% Student t quantiles for 1..30 degrees of freedom (normal beyond)
_T95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)  # fmt: skip
_FILTER = re.compile(r"^\s*([A-Za-z_][\w/.]*)\s*(==|!=|>=|<=|>|<|=)\s*(.+?)\s*$")
LINESTYLES = ("-", "--", ":", "-.")


def t95(n: int) -> float:
    """Half-width multiplier of a 95% CI of the mean of n values (std / sqrt(n) units)."""
    return _T95[n - 2] if 2 <= n <= 31 else 1.96


def missing(frame: Any, columns: list[str], what: str) -> None:
    """Raise one clear error naming the columns a picture needs that the data lacks."""
    absent = [c for c in columns if c not in frame.columns]
    if absent:
        import dataclasses

        from tfkit.ablate.kinds import KINDS

        config = {f.name for k in KINDS.values() for cls in k.sections.values() for f in dataclasses.fields(cls)}
        ordered = [c for c in frame.columns if c not in config] + [c for c in frame.columns if c in config]
        shown = ", ".join(ordered[:25]) + (f" and {len(ordered) - 25} more" if len(ordered) > 25 else "")
        raise DataError(f"{what} needs column(s) {', '.join(absent)}; the data has {shown}")


def apply_filters(frame: Any, filters: list[str]) -> Any:
    """Keep rows matching every `column op value` (ops: == != >= <= > <; `and` joins clauses)."""
    import polars as pl

    for text in filters:
        for clause in re.split(r"\s+and\s+|\s*&&\s*", text):
            match = _FILTER.match(clause)
            if not match:
                raise DataError(f"--filter {clause!r}: expected column op value, e.g. \"depth == 4\"")
            name, op, raw = match.groups()
            missing(frame, [name], f"--filter {clause!r}")
            value = _literal(raw, frame.schema[name])
            col = pl.col(name)
            expr = {"==": col == value, "=": col == value, "!=": col != value, ">=": col >= value,
                    "<=": col <= value, ">": col > value, "<": col < value}[op]  # fmt: skip
            before = frame
            frame = frame.filter(expr)
            if frame.height == 0:
                seen = before.get_column(name).unique(maintain_order=True).head(12).to_list()
                raise DataError(f"--filter {clause!r} matches no rows; {name} has values {seen}")
    return frame


def _literal(raw: str, dtype: Any) -> Any:
    import polars as pl

    raw = raw.strip().strip("'\"")
    if dtype == pl.Boolean:
        return raw.lower() in ("true", "1", "yes")
    if dtype.is_numeric():
        try:
            return float(raw) if dtype.is_float() or not raw.lstrip("-").isdigit() else int(raw)
        except ValueError:
            raise DataError(f"--filter: {raw!r} is not a number") from None
    return raw


def final_rows(frame: Any) -> Any:
    """The last evaluation of every run."""
    import polars as pl

    if "step" in frame.columns:
        return frame.sort("step").group_by("run_id", maintain_order=True).last()
    return frame.group_by("run_id", maintain_order=True).agg(pl.all().last())


def aggregate(frame: Any, keys: list[str], value: str, agg: str, band: str) -> Any:
    """Per group of `keys`: centre, lo, hi and n over the rows (the seeds) of `value`."""
    import polars as pl

    v = pl.col(value)
    data = frame.filter(v.is_not_null() & v.is_finite()) if frame.schema[value].is_float() else frame.filter(v.is_not_null())
    stats = data.group_by(keys, maintain_order=True).agg(
        v.mean().alias("mean"), v.median().alias("median"), v.std(ddof=1).fill_null(0.0).alias("std"),
        v.min().alias("min"), v.max().alias("max"), v.count().alias("n"),
    )  # fmt: skip
    centre = pl.col(agg)
    if band == "std":
        lo, hi = centre - pl.col("std"), centre + pl.col("std")
    elif band == "minmax":
        lo, hi = pl.col("min"), pl.col("max")
    elif band == "ci95":
        half = pl.col("n").map_elements(t95, return_dtype=pl.Float64) * pl.col("std") / pl.col("n").cast(pl.Float64).sqrt()
        lo, hi = centre - half, centre + half
    else:
        lo, hi = centre, centre
    return stats.with_columns(centre.alias("centre"), lo.alias("lo"), hi.alias("hi")).sort(keys)


def render(frame: Any, template: Template) -> Any:
    """Draw `template` from `frame`; returns the matplotlib Figure."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    frame = apply_filters(frame, template.filter)
    swept, fixed = setting_columns(frame)
    for text in template.filter:  # a value picked by a filter belongs in the title, default or not
        for clause in re.split(r"\s+and\s+|\s*&&\s*", text):
            name = _FILTER.match(clause).group(1)  # type: ignore[union-attr]  (validated above)
            values = frame.get_column(name).unique().to_list()
            if len(values) == 1 and name not in swept:
                fixed = {name: values[0], **fixed}
    if template.x == "auto":  # the first swept column
        if not swept:
            raise DataError(f"template {template.name} needs a swept column for x; these runs share every setting")
        template = dataclasses.replace(template, x=swept[0])
    hue = _hue(template, swept, frame)
    draw = {"curves": _curves, "final": _final, "heatmap": _heatmap, "positions": _positions}[template.kind]
    fig = draw(frame, template, hue)
    context = ", ".join(f"{k}={_fmt(v)}" for k, v in fixed.items() if k not in hue and k != template.x)
    title = template.title or template.name.replace("_", " ")
    context = textwrap.fill(context, width=int(fig.get_figwidth() * 11))
    fig.suptitle(f"{title}\n{context}" if context else title, fontsize=10)
    return fig


def _hue(template: Template, swept: list[str], frame: Any) -> list[str]:
    if template.hue == "auto":
        if template.x.startswith("num_params") or template.x in ("model_scale", "true_model_scale"):
            # x is the model's size: the shape options it stands for are not groups, but one the
            # size does not tell apart (e.g. num_heads at one width) is, or its settings would be pooled
            import polars as pl

            from tfkit.config import field_names

            def sized(c: str) -> bool:
                if c not in field_names("model") or template.x not in frame.columns:
                    return False
                counts = frame.group_by(template.x).agg(pl.col(c).n_unique().alias("n"))
                return counts.height == 0 or counts["n"].max() <= 1

            return [c for c in swept if c != template.x and not sized(c)]
        return [c for c in swept if c != template.x]
    hue = [template.hue] if isinstance(template.hue, str) else list(template.hue)
    hue = [h for h in hue if h]
    missing(frame, hue, "--hue")
    return hue


def _label(row: dict[str, Any], hue: list[str]) -> str:
    return ", ".join(f"{h}={_fmt(row[h])}" for h in hue) if hue else "all runs"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _groups(frame: Any, hue: list[str]) -> list[tuple[dict[str, Any], Any]]:
    if not hue:
        return [({}, frame)]
    keys = frame.select(hue).unique(maintain_order=True).sort(hue, nulls_last=True)
    out = []
    for key in keys.iter_rows(named=True):
        part = frame
        for name, value in key.items():
            part = part.filter(part.get_column(name).is_null() if value is None else part.get_column(name) == value)
        out.append((key, part))
    return out


def _subplots(n: int) -> tuple[Any, list[Any]]:
    import matplotlib.pyplot as plt

    cols = 2 if n == 4 else min(n, 3)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.5 * cols, 4.0 * rows), squeeze=False, layout="constrained")
    flat = [ax for row in axes for ax in row]
    for ax in flat[n:]:
        ax.remove()
    return fig, flat[:n]


def _facets(frame: Any, template: Template) -> list[tuple[str, Any, list[str]]]:
    """(subplot title, rows, y columns) per subplot."""
    if template.facet == "metric":
        return [(y, frame, [y]) for y in template.y]
    if template.facet:
        missing(frame, [template.facet], "--facet")
        values = frame.get_column(template.facet).unique(maintain_order=True).sort().to_list()
        return [(f"{template.facet}={_fmt(v)}", frame.filter(frame.get_column(template.facet) == v), template.y) for v in values]
    return [("", frame, template.y)]


def _style(ax: Any, template: Template, xlabel: str, ylabel: str, title: str) -> None:
    ax.set_xlabel(template.xlabel or xlabel)
    ax.set_ylabel(template.ylabel or ylabel)
    if title:
        ax.set_title(title, fontsize=9)
    if template.logx:
        ax.set_xscale("log")
    elif max((abs(v) for v in ax.get_xlim()), default=0) >= 1e5:  # token counts: 200k, not 200000
        from matplotlib.ticker import EngFormatter

        ax.xaxis.set_major_formatter(EngFormatter(sep=""))
    if template.logy:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)


def _curves(frame: Any, template: Template, hue: list[str]) -> Any:
    missing(frame, [template.x, *template.y], f"template {template.name}")
    facets = _facets(frame, template)
    fig, axes = _subplots(len(facets))
    for ax, (title, rows, ys) in zip(axes, facets, strict=True):
        groups = _groups(rows, hue)
        for color, (key, part) in enumerate(groups):
            for style, y in enumerate(ys):
                stats = aggregate(part, [template.x], y, template.agg, template.band)
                if stats.height == 0:
                    continue
                # colours name the settings, line styles the metrics (listed once, in black)
                single = len(groups) == 1 and len(ys) > 1
                shade = f"C{style}" if single else f"C{color}"
                label = y if single else (_label(key, hue) if style == 0 else None)
                x = stats.get_column(template.x).to_list()
                ax.plot(x, stats["centre"].to_list(), LINESTYLES[style % 4], color=shade, label=label)
                if template.band != "none":
                    ax.fill_between(x, stats["lo"].to_list(), stats["hi"].to_list(), color=shade, alpha=0.2, lw=0)
        if len(ys) > 1 and len(groups) > 1:
            for style, y in enumerate(ys):
                ax.plot([], [], LINESTYLES[style % 4], color="k", label=y)
        _style(ax, template, template.x, ys[0] if len(ys) == 1 else ", ".join(ys), title)
    return fig


def _final(frame: Any, template: Template, hue: list[str]) -> Any:
    missing(frame, [template.x, *template.y], f"template {template.name}")
    finals = final_rows(frame)
    facets = _facets(finals, template)
    fig, axes = _subplots(len(facets))
    for ax, (title, rows, ys) in zip(axes, facets, strict=True):
        for color, (key, part) in enumerate(_groups(rows, [h for h in hue if h != template.x])):
            for style, y in enumerate(ys):
                stats = aggregate(part, [template.x], y, template.agg, template.band)
                if stats.height == 0:
                    continue
                x, centre = stats.get_column(template.x).to_list(), stats["centre"].to_list()
                err = [[c - lo for c, lo in zip(centre, stats["lo"], strict=True)],
                       [hi - c for c, hi in zip(centre, stats["hi"], strict=True)]]  # fmt: skip
                label = _label(key, [h for h in hue if h != template.x]) + (f" ({y})" if len(ys) > 1 else "")
                ax.errorbar(x, centre, yerr=None if template.band == "none" else err, fmt="o" + LINESTYLES[style % 4],
                            color=f"C{color}", capsize=3, label=label)  # fmt: skip
        _style(ax, template, template.x, ys[0] if len(ys) == 1 else ", ".join(ys), title)
    return fig


def _heatmap(frame: Any, template: Template, hue: list[str]) -> Any:
    """Final metric over x and the first hue column; one panel per value of the other hue columns
    (so no setting is averaged into another), on one colour scale."""
    import numpy as np

    second = hue[0] if hue else None
    if second is None or second == template.x:
        raise DataError(f"template {template.name} needs two swept columns (x and hue); found only {template.x!r}")
    y = template.y[0]
    missing(frame, [template.x, second, y], f"template {template.name}")
    rest = [h for h in hue[1:] if h != template.x]
    stats = aggregate(final_rows(frame), [template.x, second, *rest], y, template.agg, "none")
    xs = stats.get_column(template.x).unique().sort().to_list()
    rows = stats.get_column(second).unique().sort().to_list()
    panels = _groups(stats, rest)
    grids = []
    for _, part in panels:
        grid = np.full((len(rows), len(xs)), np.nan)
        for rec in part.iter_rows(named=True):
            grid[rows.index(rec[second]), xs.index(rec[template.x])] = rec["centre"]
        grids.append(grid)
    finite = [g[~np.isnan(g)] for g in grids]
    values = np.concatenate(finite) if finite else np.array([])
    vmin, vmax = (float(values.min()), float(values.max())) if values.size else (None, None)
    fig, axes = _subplots(len(panels))
    for ax, (key, _), grid in zip(axes, panels, grids, strict=True):
        image = ax.imshow(grid, origin="lower", aspect="auto", cmap="viridis_r", vmin=vmin, vmax=vmax)
        ax.set_xticks(range(len(xs)), [_fmt(v) for v in xs])
        ax.set_yticks(range(len(rows)), [_fmt(v) for v in rows])
        for i in range(len(rows)):
            for j in range(len(xs)):
                if not np.isnan(grid[i, j]):
                    # dark text on the light (low) end of viridis_r, white on the dark end
                    light = vmax is None or vmax == vmin or (grid[i, j] - vmin) / (vmax - vmin) < 0.5
                    ax.text(j, i, f"{grid[i, j]:.5g}", ha="center", va="center", fontsize=8, color="k" if light else "w")
        ax.set_xlabel(template.xlabel or template.x)
        ax.set_ylabel(template.ylabel or second)
        if rest:
            ax.set_title(_label(key, rest), fontsize=9)
    fig.colorbar(image, ax=axes, label=f"{template.agg} {y}")
    return fig


def _positions(frame: Any, template: Template, hue: list[str]) -> Any:
    """Per-position columns `<prefix>_<i>` at the final evaluation: one panel per prefix with
    `facet = "metric"`, otherwise every prefix on one axis (solid, dashed, ...)."""
    import polars as pl

    finals = final_rows(frame)
    panels = [[prefix] for prefix in template.y] if template.facet == "metric" else [template.y]
    fig, axes = _subplots(len(panels))
    for ax, prefixes in zip(axes, panels, strict=True):
        for style, prefix in enumerate(prefixes):
            columns = position_columns(finals, prefix)
            if not columns:
                missing(finals, [f"{prefix}_1"], f"template {template.name}")
            groups = _groups(finals, hue)
            for color, (key, part) in enumerate(groups):
                if len(groups) == 1 and len(prefixes) > 1:  # one setting: a colour per metric
                    color = style
                long = part.select(
                    pl.concat_list([pl.col(c).cast(pl.Float64) for _, c in columns]).alias("value"),
                    pl.lit([i for i, _ in columns]).alias("position"),
                ).explode("value", "position")
                stats = aggregate(long, ["position"], "value", template.agg, template.band)
                x = stats["position"].to_list()
                label = _label(key, hue) + (f" ({prefix})" if len(prefixes) > 1 else "")
                if len(groups) == 1 and len(prefixes) > 1:
                    label = prefix
                ax.plot(x, stats["centre"].to_list(), "o" + LINESTYLES[style % 4], ms=3, color=f"C{color}", label=label)
                if template.band != "none":
                    ax.fill_between(x, stats["lo"].to_list(), stats["hi"].to_list(), color=f"C{color}", alpha=0.2, lw=0)
        if not template.logy and all(p.endswith("relative_loss") for p in prefixes):
            ax.axhline(1.0, color="k", lw=0.8, ls=":")
        _style(ax, template, "position", prefixes[0] if len(prefixes) == 1 else "", "")
    return fig
