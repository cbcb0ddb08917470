"""Drawing a template: seeds aggregated per setting, one colour per setting, a band over seeds.

`render(frame, template)` returns a matplotlib Figure (nothing is shown or saved here).
Every statistic is computed over the runs (seeds) of one setting at the same x: the
centre is their mean (or median) and the band their std, min-max range or 95% confidence
interval of the mean.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
import textwrap
from typing import Any

from tfkit.ablate.analysis import final_rows, swept_columns
from tfkit.config import shown
from tfkit.errors import DataError
from tfkit.plotting.data import indexed_columns
from tfkit.plotting.templates import Template

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


def numeric(frame: Any, columns: list[str], what: str) -> None:
    """Raise one clear error naming a metric column that holds text, with a value that is not a number."""
    import polars as pl

    for name in columns:
        column = frame.get_column(name)
        if column.dtype.is_numeric() or column.dtype == pl.Boolean or column.dtype == pl.Null:
            continue
        if column.dtype == pl.String:
            bad = column.filter(column.is_not_null() & column.cast(pl.Float64, strict=False).is_null())
        else:
            bad = column.drop_nulls()
        example = f" ({shown(bad[0])})" if len(bad) else ""
        raise DataError(f"{what}: column {name} holds text{example}, not numbers")


def apply_filters(frame: Any, filters: list[str]) -> Any:
    """Keep rows matching every filter: a polars SQL condition (`depth IN (1, 2) AND NOT qk_norm`).

    The simple form `column op value` (`==` or `=`; clauses joined by `and` or `&&`) also takes
    an unquoted text value (`activation == gelu`) and a column name with dots or slashes.
    """
    import polars as pl

    for text in filters:
        expr, names = parse_filter(frame, text)
        before = frame
        try:
            frame = frame.filter(expr)
        except pl.exceptions.PolarsError as e:
            raise DataError(f"--filter {text!r}: {_first_line(e)}") from None
        if frame.height == 0:
            seen = "; ".join(
                f"{n} has values {before.get_column(n).unique(maintain_order=True).head(12).to_list()}" for n in names
            )
            raise DataError(f"--filter {text!r} matches no rows" + (f"; {seen}" if seen else ""))
    return frame


def parse_filter(frame: Any, text: str) -> tuple[Any, list[str]]:
    """(polars expression, columns it reads) of one `--filter`; a bad one is one DataError."""
    import polars as pl

    clauses = [_SIMPLE.match(c) for c in _AND.split(text)]
    if all(clauses):  # the simple form: quote its names and type its values by their columns
        names = list(dict.fromkeys(m.group(1) for m in clauses))  # type: ignore[union-attr]
        missing(frame, names, f"--filter {text!r}")
        sql = " AND ".join(_simple_sql(frame, m, text) for m in clauses)  # type: ignore[arg-type]
    else:
        sql = text
    try:
        expr = pl.sql_expr(sql)
        names = expr.meta.root_names()
    except pl.exceptions.PolarsError as e:
        raise DataError(
            f"--filter {text!r} is not a condition polars SQL reads ({_first_line(e)}); "
            'e.g. "depth == 4" or "width IN (32, 64) AND NOT qk_norm"'
        ) from None
    if not names:
        raise DataError(f'--filter {text!r} names no column; e.g. "depth == 4"')
    absent = [n for n in names if n not in frame.columns]
    if absent and '"' in text:
        missing(frame, absent, f"--filter {text!r} (text values go in single quotes: 'mess3')")
    missing(frame, names, f"--filter {text!r}")
    try:
        dtype = frame.head(1).select(expr).to_series().dtype
    except pl.exceptions.PolarsError as e:
        raise DataError(f"--filter {text!r}: {_first_line(e)}") from None
    if dtype not in (pl.Boolean, pl.Null):
        raise DataError(
            f'--filter {text!r} is not a condition (it gives {dtype}, not true or false); e.g. "{names[0]} == ..."'
        )
    return expr, list(dict.fromkeys(names))


_AND = re.compile(r"\s+and\s+|\s*&&\s*", re.IGNORECASE)
# column op value, the value one word or a quoted text
_SIMPLE = re.compile(
    r"""^\s*([A-Za-z_][\w/.]*)\s*(==|!=|>=|<=|>|<|=)\s*('[^']*'|"[^"]*"|[^\s'"()=<>!][^\s'"()]*)\s*$"""
)


def _simple_sql(frame: Any, match: re.Match[str], text: str) -> str:
    """`column op value` as SQL: the column quoted, the value a literal of the column's type."""
    import polars as pl

    name, op, raw = match.groups()
    dtype = frame.schema[name]
    quoted = raw[:1] in "'\"" and raw[-1:] == raw[:1] and len(raw) >= 2
    value = raw[1:-1] if quoted else raw
    if dtype == pl.Boolean and value.lower() in ("true", "false", "1", "0", "yes", "no"):
        literal = "TRUE" if value.lower() in ("true", "1", "yes") else "FALSE"
    elif dtype.is_numeric() and not quoted and value in frame.columns:  # another column: `val_loss < train_loss`
        literal = '"' + value.replace('"', '""') + '"'
    elif dtype.is_numeric():
        try:
            number = float(value)
        except ValueError:
            raise DataError(f"--filter {text!r}: {name} holds numbers, and {value!r} is not one") from None
        if not math.isfinite(number):
            raise DataError(f"--filter {text!r}: {value!r} is not a finite number")
        literal = value
    else:
        literal = "'" + value.replace("'", "''") + "'"
    column = '"' + name.replace('"', '""') + '"'
    return f"{column} {'=' if op == '==' else op} {literal}"


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:200]


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


def render(frame: Any, template: Template) -> Any:
    """Draw `template` from `frame`; returns the matplotlib Figure."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    frame = apply_filters(frame, template.filter)
    swept, fixed = swept_columns(frame)
    for text in template.filter:  # a value picked by a filter belongs in the title, default or not
        for name in parse_filter(frame, text)[1]:
            values = frame.get_column(name).unique().to_list()
            if len(values) == 1 and name not in swept:
                fixed = {name: values[0], **fixed}
    if template.x == "auto":  # the first swept column
        if not swept:
            raise DataError(f"template {template.name} needs a swept column for x; these runs share every setting")
        template = dataclasses.replace(template, x=swept[0])
    hue = _hue(template, swept, frame)
    # swept columns that neither colour nor x tell apart: each line runs over (or pools) them
    along = [c for c in swept if c not in hue and c != template.x]
    if template.kind == "heatmap":
        fig = _heatmap(frame, template, hue)
    else:
        draw = {"curves": _curves, "final": _final, "positions": _positions, "simplex": _simplex}[template.kind]
        fig = draw(frame, template, hue, along)
        _legend(fig)
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


def _label(row: dict[str, Any], hue: list[str], part: Any = None, along: list[str] | None = None) -> str:
    """A line's legend entry: its values of the hue columns, then what varies along it (or is
    pooled in it), e.g. `num_heads=2 (depth ∈ {1, 2}, width=8)`; "" when nothing needs naming."""
    named = ", ".join(f"{h}={_fmt(row[h])}" for h in hue)
    varying = _varying(part, along) if part is not None and along else ""
    return f"{named} ({varying})" if named and varying else named or varying


def _with_metric(label: str, metric: str, several: bool) -> str | None:
    """A legend entry that also names its metric where a panel shows several; None: no entry."""
    if several:
        return f"{label} ({metric})" if label else metric
    return label or None


def _varying(frame: Any, columns: list[str]) -> str:
    """`depth ∈ {1, 2}, width=32`: the values each column takes in `frame`."""
    parts = []
    for name in columns:
        values = frame.get_column(name).drop_nulls().unique().sort().to_list()
        if len(values) == 1:
            parts.append(f"{name}={_fmt(values[0])}")
        elif values:
            parts.append(f"{name} ∈ {{{', '.join(_fmt(v) for v in values)}}}")
    return ", ".join(parts)


#: y labels that say what a metric is (in its unit); other columns are labelled by their name
METRIC_LABELS = {"excess_loss": "excess loss over optimal (nats)"}


def _ylabel(ys: list[str]) -> str:
    return METRIC_LABELS.get(ys[0], ys[0]) if len(ys) == 1 else ", ".join(ys)


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
        return [
            (f"{template.facet}={_fmt(v)}", frame.filter(frame.get_column(template.facet) == v), template.y)
            for v in values
        ]
    return [("", frame, template.y)]


def _style(ax: Any, template: Template, xlabel: str, ylabel: str, title: str) -> None:
    ax.set_xlabel(template.xlabel or xlabel)
    ax.set_ylabel(template.ylabel or ylabel)
    if title:
        ax.set_title(title, fontsize=9)
    if template.logx:
        ax.set_xscale("log")
        readable_log_axis(ax.xaxis)
    elif max((abs(v) for v in ax.get_xlim()), default=0) >= 1e5:  # token counts: 200k, not 200000
        from matplotlib.ticker import EngFormatter

        ax.xaxis.set_major_formatter(EngFormatter(sep=""))
    if template.logy:
        ax.set_yscale("log")
        readable_log_axis(ax.yaxis)
    ax.grid(alpha=0.3)


def _legend(fig: Any) -> None:
    """One legend for the figure, outside the axes on the right (so it covers no data); the
    figure grows by its width, so the axes keep theirs."""
    handles: dict[str, Any] = {}
    for ax in fig.axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, handle)
    if not handles:
        return
    # beside the axes, level with their middle: clear of the data and of the title above them
    legend = fig.legend(list(handles.values()), list(handles), loc="outside right center", fontsize=8)
    get_renderer = getattr(fig.canvas, "get_renderer", None)
    if get_renderer is not None:
        width = legend.get_window_extent(get_renderer()).width / fig.dpi
    else:  # a canvas that cannot measure text: about 0.07 in a character at this size
        width = 0.5 + 0.07 * max(len(label) for label in handles)
    fig.set_figwidth(fig.get_figwidth() + width + 0.1)


# a log axis over fewer decades than this reads plain decimals (0.002, 1.0894); wider, powers of ten
PLAIN_DECADES = 2.0


def readable_log_axis(axis: Any) -> None:
    """Ticks a reader can read on a log axis: over a narrow range, plain decimals at 1-2-5 steps
    (or evenly spaced ones where those give fewer than three ticks), never `1.09×10⁰`."""
    from matplotlib.ticker import NullFormatter

    locator, formatter = _log_ticks()
    axis.set_major_locator(locator())
    axis.set_major_formatter(formatter())
    axis.set_minor_formatter(NullFormatter())


@functools.cache
def _log_ticks() -> tuple[type, type]:
    from matplotlib.ticker import LogFormatterSciNotation, LogLocator, MaxNLocator

    def narrow(vmin: float, vmax: float) -> bool:
        lo, hi = sorted((vmin, vmax))
        return lo > 0 and math.log10(hi / lo) < PLAIN_DECADES

    class Locator(LogLocator):
        def tick_values(self, vmin: float, vmax: float) -> Any:
            if not narrow(vmin, vmax):
                return super().tick_values(vmin, vmax)
            lo, hi = sorted((vmin, vmax))
            ticks = LogLocator(subs=(1.0, 2.0, 5.0)).tick_values(lo, hi)
            if sum(lo <= t <= hi for t in ticks) >= 3:
                return ticks
            ticks = MaxNLocator(nbins=5, steps=[1, 2, 2.5, 5, 10]).tick_values(lo, hi)
            return ticks[ticks > 0]

    class Formatter(LogFormatterSciNotation):
        def __call__(self, x: float, pos: int | None = None) -> str:
            if self.axis is None or not narrow(*self.axis.get_view_interval()):
                return super().__call__(x, pos)
            return plain_number(x)

    return Locator, Formatter


def plain_number(x: float) -> str:
    """`0.0005`, `1.0894`, `20k`: a tick value in as few plain digits as it needs."""
    from matplotlib.ticker import EngFormatter

    if x == 0 or not math.isfinite(x):
        return f"{x:g}"
    if abs(x) >= 1e4:
        return EngFormatter(sep="")(x)
    decimals = next((d for d in range(13) if abs(round(x, d) - x) <= 1e-9 * abs(x)), 12)
    return f"{x:.{decimals}f}"


def _curves(frame: Any, template: Template, hue: list[str], along: list[str]) -> Any:
    missing(frame, [template.x, *template.y], f"template {template.name}")
    numeric(frame, template.y, f"template {template.name}")
    facets = _facets(frame, template)
    fig, axes = _subplots(len(facets))
    for ax, (title, rows, ys) in zip(axes, facets, strict=True):
        groups = _groups(rows, hue)
        for color, (key, part) in enumerate(groups):
            for style, y in enumerate(ys):
                stats = aggregate(on_common_grid(part, template.x, y), [template.x], y, template.agg, template.band)
                if stats.height == 0:
                    continue
                # colours name the settings, line styles the metrics (listed once, in black)
                single = len(groups) == 1 and len(ys) > 1
                shade = f"C{style}" if single else f"C{color}"
                label = y if single else (_label(key, hue, part, along) or None if style == 0 else None)
                x = stats.get_column(template.x).to_list()
                ax.plot(x, stats["centre"].to_list(), LINESTYLES[style % 4], color=shade, label=label)
                if template.band != "none":
                    ax.fill_between(x, stats["lo"].to_list(), stats["hi"].to_list(), color=shade, alpha=0.2, lw=0)
        if len(ys) > 1 and len(groups) > 1:
            for style, y in enumerate(ys):
                ax.plot([], [], LINESTYLES[style % 4], color="k", label=y)
        _style(ax, template, template.x, _ylabel(ys), title)
    return fig


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


def _final(frame: Any, template: Template, hue: list[str], along: list[str]) -> Any:
    missing(frame, [template.x, *template.y], f"template {template.name}")
    numeric(frame, template.y, f"template {template.name}")
    finals = final_rows(frame)
    if template.diverged == "clip":
        from tfkit.ablate.sensitivity import clip_diverged

        for y in template.y:
            finals = clip_diverged(finals, y)
    facets = _facets(finals, template)
    fig, axes = _subplots(len(facets))
    for ax, (title, rows, ys) in zip(axes, facets, strict=True):
        for color, (key, part) in enumerate(_groups(rows, [h for h in hue if h != template.x])):
            for style, y in enumerate(ys):
                if template.diverged == "clip":
                    _mark_diverged(ax, part, template.x, y, f"C{color}")
                stats = aggregate(part, [template.x], y, template.agg, template.band)
                if stats.height == 0:
                    continue
                x, centre = stats.get_column(template.x).to_list(), stats["centre"].to_list()
                err = [
                    [c - lo for c, lo in zip(centre, stats["lo"], strict=True)],
                    [hi - c for c, hi in zip(centre, stats["hi"], strict=True)],
                ]
                label = _with_metric(_label(key, [h for h in hue if h != template.x], part, along), y, len(ys) > 1)
                ax.errorbar(
                    x,
                    centre,
                    yerr=None if template.band == "none" else err,
                    fmt="o" + LINESTYLES[style % 4],
                    color=f"C{color}",
                    capsize=3,
                    label=label,
                )
        _style(ax, template, template.x, _ylabel(ys), title)
    return fig


def _mark_diverged(ax: Any, part: Any, x: str, y: str, color: str) -> None:
    """Diverged runs (`clip_diverged`) as x markers at the initial loss they are counted as."""
    diverged = part.filter(part.get_column("diverged"))
    if diverged.height:
        ax.scatter(
            diverged.get_column(x).to_list(),
            diverged.get_column(y).to_list(),
            marker="x",
            s=60,
            color=color,
            zorder=3,
            label="diverged (at the initial loss)",
        )


def _heatmap(frame: Any, template: Template, hue: list[str]) -> Any:
    """Final metric over x and the first hue column; one panel per value of the other hue columns
    (so no setting is averaged into another), on one colour scale."""
    import numpy as np

    second = hue[0] if hue else None
    if second is None or second == template.x:
        raise DataError(f"template {template.name} needs two swept columns (x and hue); found only {template.x!r}")
    y = template.y[0]
    missing(frame, [template.x, second, y], f"template {template.name}")
    numeric(frame, [y], f"template {template.name}")
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
                    ax.text(
                        j, i, f"{grid[i, j]:.5g}", ha="center", va="center", fontsize=8, color="k" if light else "w"
                    )
        ax.set_xlabel(template.xlabel or template.x)
        ax.set_ylabel(template.ylabel or second)
        if rest:
            ax.set_title(_label(key, rest), fontsize=9)
    fig.colorbar(image, ax=axes, label=f"{template.agg} {y}")
    return fig


def _positions(frame: Any, template: Template, hue: list[str], along: list[str]) -> Any:
    """Per-position columns `<prefix>_<i>` at the final evaluation: one panel per prefix with
    `facet = "metric"`, otherwise every prefix on one axis (solid, dashed, ...)."""
    import polars as pl

    finals = final_rows(frame)
    panels = [[prefix] for prefix in template.y] if template.facet == "metric" else [template.y]
    fig, axes = _subplots(len(panels))
    for ax, prefixes in zip(axes, panels, strict=True):
        for style, prefix in enumerate(prefixes):
            columns = indexed_columns(finals, prefix)
            if not columns:
                missing(finals, [f"{prefix}_1"], f"template {template.name}")
            numeric(finals, [c for _, c in columns], f"template {template.name}")
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
                label = _with_metric(_label(key, hue, part, along), prefix, len(prefixes) > 1)
                if len(groups) == 1 and len(prefixes) > 1:
                    label = prefix
                ax.plot(x, stats["centre"].to_list(), "o" + LINESTYLES[style % 4], ms=3, color=f"C{color}", label=label)
                if template.band != "none":
                    ax.fill_between(x, stats["lo"].to_list(), stats["hi"].to_list(), color=f"C{color}", alpha=0.2, lw=0)
        if not template.logy and all(p.endswith("relative_loss") for p in prefixes):
            ax.axhline(1.0, color="k", lw=0.8, ls=":")
        _style(ax, template, "position", prefixes[0] if len(prefixes) == 1 else "", "")
    return fig


def _simplex(frame: Any, template: Template, hue: list[str], along: list[str]) -> Any:
    """Points of distributions: on the 2-simplex for 3 coordinates (the triangle of Shai et al.'s
    belief pictures), else on the plane of the true points' first two principal components.

    `y` = [true prefix, predicted prefix] (`belief`, `predicted`: columns `belief_1..S`). The
    first panel shows the true points, then one panel per value of `facet` (in file order) its
    predicted points. Every point is coloured by its true coordinates: as RGB for 3, by its
    first three principal components otherwise, so a prediction shows where it should be.
    """
    import matplotlib.pyplot as plt
    import numpy as np

    if len(template.y) != 2:
        raise DataError(f"template {template.name}: a simplex picture needs y = [true prefix, predicted prefix]")
    truth_columns = [c for _, c in indexed_columns(frame, template.y[0])]
    if len(truth_columns) < 2:
        missing(frame, [f"{template.y[0]}_1", f"{template.y[0]}_2"], f"template {template.name}")
    predicted_columns = [f"{template.y[1]}_{k}" for k in range(1, len(truth_columns) + 1)]
    missing(frame, predicted_columns, f"template {template.name}")
    numeric(frame, truth_columns + predicted_columns, f"template {template.name}")
    if template.facet:
        missing(frame, [template.facet], "--facet")
        values = frame.get_column(template.facet).unique(maintain_order=True).to_list()
        panels = [(_fmt(v), frame.filter(frame.get_column(template.facet) == v)) for v in values]
    else:
        panels = [(template.y[1], frame)]
    truth = panels[0][1].select(truth_columns).to_numpy().astype(float)  # (n, S)
    project, colour = _simplex_plane(truth)
    cols = min(len(panels) + 1, 4)
    rows = math.ceil((len(panels) + 1) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.0 * rows), squeeze=False, layout="constrained")
    flat = [ax for row in axes for ax in row]
    for ax in flat[len(panels) + 1 :]:
        ax.remove()
    shown_truth = project(truth)  # (n, 2)
    lo, hi = shown_truth.min(axis=0), shown_truth.max(axis=0)
    margin = 0.12 * max(float((hi - lo).max()), 1e-9)
    corners = project(np.eye(truth.shape[1])) if truth.shape[1] == 3 else None
    # a fractal of thousands of beliefs in fine dots; a process with few beliefs (rrxor) in visible ones
    size = 0.6 if len(np.unique(np.round(truth, 6), axis=0)) > 200 else 6.0
    for ax, (title, part, columns) in zip(
        flat, [("true", panels[0][1], truth_columns), *((t, p, predicted_columns) for t, p in panels)], strict=False
    ):
        points = project(part.select(columns).to_numpy().astype(float))
        colours = colour(part.select(truth_columns).to_numpy().astype(float))
        if corners is not None:
            ax.fill(corners[:, 0], corners[:, 1], facecolor="none", edgecolor="0.6", lw=0.8)
        ax.scatter(points[:, 0], points[:, 1], c=colours, s=size, marker=".", linewidths=0, rasterized=True)
        ax.set_xlim(lo[0] - margin, hi[0] + margin)
        ax.set_ylim(lo[1] - margin, hi[1] + margin)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(title, fontsize=9)
    return fig


def _simplex_plane(truth: Any) -> tuple[Any, Any]:
    """(project, colour): 2-D positions and RGB colours of (n, S) points, both fixed by the true points."""
    import numpy as np

    if truth.shape[1] == 3:
        # barycentric coordinates on the triangle (0, 0), (1, 0), (1/2, √3/2)
        corners = np.array([[0.0, 0.0], [1.0, 0.0], [0.5, math.sqrt(3) / 2]])
        return (lambda p: p @ corners), (lambda p: np.clip(p, 0.0, 1.0))
    mean = truth.mean(axis=0)
    _, _, vt = np.linalg.svd(truth - mean, full_matrices=False)
    axes = vt[:3]  # (<=3, S) principal directions of the true points
    scores = (truth - mean) @ axes.T
    low, span = scores.min(axis=0), np.maximum(np.ptp(scores, axis=0), 1e-12)

    def colour(p: Any) -> Any:
        rgb = np.clip(((p - mean) @ axes.T - low) / span, 0.0, 1.0)
        return np.pad(rgb, ((0, 0), (0, 3 - rgb.shape[1])), constant_values=0.5)

    def project(p: Any) -> Any:
        plane = (p - mean) @ axes[:2].T
        return np.pad(plane, ((0, 0), (0, 2 - plane.shape[1])))

    return project, colour
