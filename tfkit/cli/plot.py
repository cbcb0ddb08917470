"""`tfkit plot`: pictures of runs and ablations from templates in plot_templates/."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tfkit.cli._output import console, print_json
from tfkit.errors import ConfigError


def plot(
    inputs: Annotated[
        list[str] | None,
        typer.Argument(help="results.csv files, run directories or globs of them.", show_default=False),
    ] = None,
    template: Annotated[
        str | None,
        typer.Option(
            "--template",
            "-t",
            show_default=False,
            help="A shipped template or a .toml file (default: excess_loss where the results have an optimal loss, "
            "else loss_curves).",
        ),
    ] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Image file: .png, .svg or .pdf.")] = None,
    x: Annotated[str | None, typer.Option("--x", help="Column on the x axis.")] = None,
    y: Annotated[list[str] | None, typer.Option("--y", help="Column(s) on the y axis (repeatable).")] = None,
    hue: Annotated[
        list[str] | None, typer.Option("--hue", help="Colour by these columns (default: the swept ones).")
    ] = None,
    facet: Annotated[
        str | None, typer.Option("--facet", help="One panel per value of this column ('metric': per y).")
    ] = None,
    filters: Annotated[
        list[str] | None,
        typer.Option(
            "--filter",
            help='Keep rows: a polars SQL condition, e.g. "depth == 4" or '
            '"width IN (32, 64) AND NOT qk_norm" (repeatable).',
        ),
    ] = None,
    agg: Annotated[str | None, typer.Option("--agg", help="mean or median over seeds.")] = None,
    band: Annotated[str | None, typer.Option("--band", help="std, minmax, ci95 or none.")] = None,
    logx: Annotated[bool | None, typer.Option("--logx/--no-logx", help="Log-scale x axis.", show_default=False)] = None,
    logy: Annotated[bool | None, typer.Option("--logy/--no-logy", help="Log-scale y axis.", show_default=False)] = None,
    title: Annotated[str | None, typer.Option("--title", help="Figure title.")] = None,
    list_templates: Annotated[
        bool, typer.Option("--list-templates", help="List the shipped templates and exit.")
    ] = False,
    json_output: Annotated[bool, typer.Option("--json", help="With --list-templates: as JSON.")] = False,
) -> None:
    """Plot runs or an ablation's results: mean over seeds per setting with a band (excess loss, or loss curves)."""
    from tfkit.plotting.templates import list_templates as all_templates
    from tfkit.plotting.templates import load_template

    if list_templates:
        shipped = all_templates()
        if json_output:
            print_json([{"name": t.name, "kind": t.kind, "description": t.description} for t in shipped])
            return
        for t in shipped:
            console.print(f"[bold]{t.name:<28}[/] {t.description}", highlight=False, soft_wrap=True)
        return
    if not inputs:
        raise ConfigError("give a results.csv, run directories or globs to plot (or --list-templates)")
    if out is not None:
        from tfkit.plotting import check_output

        check_output(out, Path(template).stem if template else "results")
    if out is not None and out.suffix.lower() not in (".png", ".svg", ".pdf"):
        raise ConfigError(f"--out must end in .png, .svg or .pdf, got {out.name}")
    overrides = {
        "x": x,
        "y": y,
        "hue": hue,
        "facet": facet,
        "filter": filters,
        "agg": agg,
        "band": band,
        "logx": logx,
        "logy": logy,
        "title": title,
    }
    chosen = load_template(template) if template is not None else None  # None: the default picture for the data
    from tfkit.plotting import plot_runs

    path = plot_runs(inputs, chosen, out, overrides)
    console.print(f"Wrote {path}", highlight=False, soft_wrap=True)
