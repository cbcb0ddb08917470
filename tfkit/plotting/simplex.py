"""The `simplex` picture: points of distributions (beliefs), true and predicted, on the
2-simplex for 3 coordinates, else on the plane of the true points' first two principal components.
"""

from __future__ import annotations

import math
from typing import Any

from tfkit.errors import DataError
from tfkit.plotting.axes import format_value
from tfkit.plotting.data import indexed_columns
from tfkit.plotting.filters import missing, numeric
from tfkit.plotting.templates import Template


def draw_simplex(frame: Any, template: Template, hue: list[str], along: list[str]) -> Any:
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
        panels = [(format_value(v), frame.filter(frame.get_column(template.facet) == v)) for v in values]
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
