"""The look of a picture: panels (subplots), axis labels and scales, readable log-axis ticks, the
figure's one legend, and the text of legend entries and values.
"""

from __future__ import annotations

import functools
import math
from typing import Any

from tfkit.plotting.templates import Template

LINESTYLES = ("-", "--", ":", "-.")


def legend_label(row: dict[str, Any], hue: list[str], part: Any = None, along: list[str] | None = None) -> str:
    """A line's legend entry: its values of the hue columns, then what varies along it (or is
    pooled in it), e.g. `num_heads=2 (depth ∈ {1, 2}, width=8)`; "" when nothing needs naming."""
    named = ", ".join(f"{h}={format_value(row[h])}" for h in hue)
    varying = _varying(part, along) if part is not None and along else ""
    return f"{named} ({varying})" if named and varying else named or varying


def with_metric(label: str, metric: str, several: bool) -> str | None:
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
            parts.append(f"{name}={format_value(values[0])}")
        elif values:
            parts.append(f"{name} ∈ {{{', '.join(format_value(v) for v in values)}}}")
    return ", ".join(parts)


#: y labels that say what a metric is (in its unit); other columns are labelled by their name
METRIC_LABELS = {"excess_loss": "excess loss over optimal (nats)"}


def metric_label(ys: list[str]) -> str:
    """The y label of a panel that shows the metrics `ys`."""
    return METRIC_LABELS.get(ys[0], ys[0]) if len(ys) == 1 else ", ".join(ys)


def format_value(value: Any) -> str:
    """A value as a label shows it: floats in 4 significant digits."""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def subplots(n: int) -> tuple[Any, list[Any]]:
    """A figure with `n` panels, at most 3 a row (2 for 4), and the panels."""
    import matplotlib.pyplot as plt

    cols = 2 if n == 4 else min(n, 3)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.5 * cols, 4.0 * rows), squeeze=False, layout="constrained")
    flat = [ax for row in axes for ax in row]
    for ax in flat[n:]:
        ax.remove()
    return fig, flat[:n]


def style_axes(ax: Any, template: Template, xlabel: str, ylabel: str, title: str) -> None:
    """Labels (the template's where it names them), title, log or engineering scales and a light grid."""
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


def figure_legend(fig: Any) -> None:
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
