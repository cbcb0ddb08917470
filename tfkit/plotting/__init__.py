"""Pictures of runs and ablations from declarative templates (polars + matplotlib)."""

from __future__ import annotations

from pathlib import Path

from tfkit.plotting.templates import Template


def default_output(inputs: list[str], template: Template) -> Path:
    """`results.png` beside a results file; `<dir>/<template>.png` inside a single run directory."""
    first = Path(inputs[0])
    if len(inputs) == 1 and first.is_file():
        suffix = "" if template.name == "loss_curves" else f"_{template.name}"
        return first.with_name(f"{first.stem}{suffix}.png")
    base = first if first.is_dir() and len(inputs) == 1 else Path(".")
    return base / f"{template.name}.png"


def plot_runs(inputs: list[str], template: Template, out: str | Path | None = None) -> Path:
    """Load `inputs`, draw `template` and save it (atomically); returns the image path."""
    import os

    import matplotlib.pyplot as plt

    from tfkit.plotting.data import load_runs
    from tfkit.plotting.render import render

    frame = load_runs(inputs, template.source)
    figure = render(frame, template)
    path = Path(out) if out is not None else default_output(inputs, template)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        figure.savefig(tmp, dpi=150)
        os.replace(tmp, path)
    finally:
        plt.close(figure)
        tmp.unlink(missing_ok=True)
    return path
