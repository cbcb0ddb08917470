"""The kinds of picture drawn from metrics: `curves` (a metric over steps, tokens or time),
`final` (the final value over a swept column), `heatmap` (the final value over two swept
columns) and `positions` (per-position metrics at the final evaluation).

Each takes the frame, the template and the hue columns (one colour per setting) and returns a
matplotlib Figure; the lines and points are aggregated over seeds (`tfkit.plotting.stats`).
"""

from __future__ import annotations

from typing import Any

from tfkit.ablate.analysis import final_rows
from tfkit.ablate.sensitivity import clip_diverged
from tfkit.errors import DataError
from tfkit.plotting.axes import LINESTYLES, format_value, legend_label, metric_label, style_axes, subplots, with_metric
from tfkit.plotting.data import indexed_columns
from tfkit.plotting.filters import missing, numeric
from tfkit.plotting.stats import aggregate, on_common_grid
from tfkit.plotting.templates import Template


def hue_groups(frame: Any, hue: list[str]) -> list[tuple[dict[str, Any], Any]]:
    """(values of the hue columns, rows) per setting, in sorted order; the whole frame without hue."""
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


def facet_panels(frame: Any, template: Template) -> list[tuple[str, Any, list[str]]]:
    """(subplot title, rows, y columns) per subplot."""
    if template.facet == "metric":
        return [(y, frame, [y]) for y in template.y]
    if template.facet:
        missing(frame, [template.facet], "--facet")
        values = frame.get_column(template.facet).unique(maintain_order=True).sort().to_list()
        return [
            (f"{template.facet}={format_value(v)}", frame.filter(frame.get_column(template.facet) == v), template.y)
            for v in values
        ]
    return [("", frame, template.y)]


def draw_curves(frame: Any, template: Template, hue: list[str], along: list[str]) -> Any:
    """Each y over x, a line per setting (a colour) and metric (a line style), a band over seeds."""
    missing(frame, [template.x, *template.y], f"template {template.name}")
    numeric(frame, template.y, f"template {template.name}")
    facets = facet_panels(frame, template)
    fig, axes = subplots(len(facets))
    for ax, (title, rows, ys) in zip(axes, facets, strict=True):
        groups = hue_groups(rows, hue)
        for color, (key, part) in enumerate(groups):
            for style, y in enumerate(ys):
                stats = aggregate(on_common_grid(part, template.x, y), [template.x], y, template.agg, template.band)
                if stats.height == 0:
                    continue
                # colours name the settings, line styles the metrics (listed once, in black)
                single = len(groups) == 1 and len(ys) > 1
                shade = f"C{style}" if single else f"C{color}"
                label = y if single else (legend_label(key, hue, part, along) or None if style == 0 else None)
                x = stats.get_column(template.x).to_list()
                ax.plot(x, stats["centre"].to_list(), LINESTYLES[style % 4], color=shade, label=label)
                if template.band != "none":
                    ax.fill_between(x, stats["lo"].to_list(), stats["hi"].to_list(), color=shade, alpha=0.2, lw=0)
        if len(ys) > 1 and len(groups) > 1:
            for style, y in enumerate(ys):
                ax.plot([], [], LINESTYLES[style % 4], color="k", label=y)
        style_axes(ax, template, template.x, metric_label(ys), title)
    return fig


def draw_final(frame: Any, template: Template, hue: list[str], along: list[str]) -> Any:
    """Each y at the final evaluation over x, points with error bars over seeds, per setting."""
    missing(frame, [template.x, *template.y], f"template {template.name}")
    numeric(frame, template.y, f"template {template.name}")
    finals = final_rows(frame)
    if template.diverged == "clip":
        for y in template.y:
            finals = clip_diverged(finals, y)
    facets = facet_panels(finals, template)
    fig, axes = subplots(len(facets))
    for ax, (title, rows, ys) in zip(axes, facets, strict=True):
        for color, (key, part) in enumerate(hue_groups(rows, [h for h in hue if h != template.x])):
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
                label = with_metric(legend_label(key, [h for h in hue if h != template.x], part, along), y, len(ys) > 1)
                ax.errorbar(
                    x,
                    centre,
                    yerr=None if template.band == "none" else err,
                    fmt="o" + LINESTYLES[style % 4],
                    color=f"C{color}",
                    capsize=3,
                    label=label,
                )
        style_axes(ax, template, template.x, metric_label(ys), title)
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


def draw_heatmap(frame: Any, template: Template, hue: list[str]) -> Any:
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
    panels = hue_groups(stats, rest)
    grids = []
    for _, part in panels:
        grid = np.full((len(rows), len(xs)), np.nan)
        for rec in part.iter_rows(named=True):
            grid[rows.index(rec[second]), xs.index(rec[template.x])] = rec["centre"]
        grids.append(grid)
    finite = [g[~np.isnan(g)] for g in grids]
    values = np.concatenate(finite) if finite else np.array([])
    vmin, vmax = (float(values.min()), float(values.max())) if values.size else (None, None)
    fig, axes = subplots(len(panels))
    for ax, (key, _), grid in zip(axes, panels, grids, strict=True):
        image = ax.imshow(grid, origin="lower", aspect="auto", cmap="viridis_r", vmin=vmin, vmax=vmax)
        ax.set_xticks(range(len(xs)), [format_value(v) for v in xs])
        ax.set_yticks(range(len(rows)), [format_value(v) for v in rows])
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
            ax.set_title(legend_label(key, rest), fontsize=9)
    fig.colorbar(image, ax=axes, label=f"{template.agg} {y}")
    return fig


def draw_positions(frame: Any, template: Template, hue: list[str], along: list[str]) -> Any:
    """Per-position columns `<prefix>_<i>` at the final evaluation: one panel per prefix with
    `facet = "metric"`, otherwise every prefix on one axis (solid, dashed, ...)."""
    import polars as pl

    finals = final_rows(frame)
    panels = [[prefix] for prefix in template.y] if template.facet == "metric" else [template.y]
    fig, axes = subplots(len(panels))
    for ax, prefixes in zip(axes, panels, strict=True):
        for style, prefix in enumerate(prefixes):
            columns = indexed_columns(finals, prefix)
            if not columns:
                missing(finals, [f"{prefix}_1"], f"template {template.name}")
            numeric(finals, [c for _, c in columns], f"template {template.name}")
            groups = hue_groups(finals, hue)
            for color, (key, part) in enumerate(groups):
                if len(groups) == 1 and len(prefixes) > 1:  # one setting: a colour per metric
                    color = style
                long = part.select(
                    pl.concat_list([pl.col(c).cast(pl.Float64) for _, c in columns]).alias("value"),
                    pl.lit([i for i, _ in columns]).alias("position"),
                ).explode("value", "position")
                stats = aggregate(long, ["position"], "value", template.agg, template.band)
                x = stats["position"].to_list()
                label = with_metric(legend_label(key, hue, part, along), prefix, len(prefixes) > 1)
                if len(groups) == 1 and len(prefixes) > 1:
                    label = prefix
                ax.plot(x, stats["centre"].to_list(), "o" + LINESTYLES[style % 4], ms=3, color=f"C{color}", label=label)
                if template.band != "none":
                    ax.fill_between(x, stats["lo"].to_list(), stats["hi"].to_list(), color=f"C{color}", alpha=0.2, lw=0)
        if not template.logy and all(p.endswith("relative_loss") for p in prefixes):
            ax.axhline(1.0, color="k", lw=0.8, ls=":")
        style_axes(ax, template, "position", prefixes[0] if len(prefixes) == 1 else "", "")
    return fig
