"""Drawing a template: seeds aggregated per setting, one colour per setting, a band over seeds.

`render(frame, template)` returns a matplotlib Figure (nothing is shown or saved here).
Every statistic is computed over the runs (seeds) of one setting at the same x: the
centre is their mean (or median) and the band their std, min-max range or 95% confidence
interval of the mean.

Here the template meets the data: `--filter` selects the rows (`filters.py`), x and the hue
columns are chosen among the swept ones, one kind of picture is drawn (`kinds.py`,
`simplex.py`; statistics in `stats.py`, their look in `axes.py`) and titled with the
settings every line shares.
"""

from __future__ import annotations

import dataclasses
import textwrap
from typing import Any

from tfkit.ablate.analysis import swept_columns
from tfkit.config import field_names
from tfkit.errors import DataError
from tfkit.plotting.axes import figure_legend, format_value
from tfkit.plotting.filters import apply_filters, missing, parse_filter
from tfkit.plotting.kinds import draw_curves, draw_final, draw_heatmap, draw_positions
from tfkit.plotting.simplex import draw_simplex
from tfkit.plotting.templates import Template


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
        fig = draw_heatmap(frame, template, hue)
    else:
        drawers = {"curves": draw_curves, "final": draw_final, "positions": draw_positions, "simplex": draw_simplex}
        fig = drawers[template.kind](frame, template, hue, along)
        figure_legend(fig)
    context = ", ".join(f"{k}={format_value(v)}" for k, v in fixed.items() if k not in hue and k != template.x)
    title = template.title or template.name.replace("_", " ")
    context = textwrap.fill(context, width=int(fig.get_figwidth() * 11))
    fig.suptitle(f"{title}\n{context}" if context else title, fontsize=10)
    return fig


def _hue(template: Template, swept: list[str], frame: Any) -> list[str]:
    """The columns that get one colour per value: the template's, or every swept one but x."""
    if template.hue == "auto":
        if template.x.startswith("num_params") or template.x in ("model_scale", "true_model_scale"):
            # x is the model's size: the shape options it stands for are not groups, but one the
            # size does not tell apart (e.g. num_heads at one width) is, or its settings would be pooled
            import polars as pl

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
