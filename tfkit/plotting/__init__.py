"""Pictures of runs and ablations from declarative templates (polars + matplotlib)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tfkit.errors import ConfigError
from tfkit.plotting.templates import DEFAULT_TEMPLATE, Template


def default_output(inputs: list[str], template: Template, default: bool = False) -> Path:
    """`results.png` beside a results file for the default picture, `results_<template>.png` for a
    chosen template; `<dir>/<template>.png` inside a single run directory."""
    first = Path(inputs[0])
    if len(inputs) == 1 and first.is_file():
        suffix = "" if default else f"_{template.name}"
        return first.with_name(f"{first.stem}{suffix}.png")
    base = first if first.is_dir() and len(inputs) == 1 else Path(".")
    return base / f"{template.name}.png"


def check_output(out: str | Path, name: str = DEFAULT_TEMPLATE) -> None:
    """Refuse an image path that is a directory, or lies under a file, before anything is drawn."""
    path = Path(out)
    if path.is_dir():
        raise ConfigError(f"{path} is a directory, not an image file; give --out a file such as {path / name}.png")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if parent.exists() and not parent.is_dir():
        raise ConfigError(f"cannot write {path}: {parent} is a file, not a directory")


def plot_runs(
    inputs: list[str],
    template: Template | None = None,
    out: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
) -> Path:
    """Load `inputs`, draw `template` and save it (atomically); returns the image path.

    Without a template, the picture is the default one for the data (`default_template`):
    excess loss where the results have an optimal loss, loss curves otherwise; `overrides`
    (command-line values, None = keep) apply to it.
    """
    import os

    import matplotlib.pyplot as plt

    from tfkit.plotting.data import load_runs
    from tfkit.plotting.render import render
    from tfkit.plotting.templates import default_template, load_template

    if out is not None:
        check_output(out, template.name if template is not None else "results")
    frame = load_runs(inputs, template.source if template is not None else "val")
    default = template is None
    if template is None:
        template = load_template(default_template(frame, (overrides or {}).get("y")))
    if overrides:
        template = template.with_overrides(overrides)
    path = Path(out) if out is not None else default_output(inputs, template, default)
    check_output(path, template.name)
    figure = render(frame, template)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        figure.savefig(tmp, dpi=150)
        os.replace(tmp, path)
    finally:
        plt.close(figure)
        tmp.unlink(missing_ok=True)
    return path
