"""What `tfkit plot` draws by default, checked on the figure the command saves.

The results imitate a mess3 ablation: validation loss between 1.089 and 1.094 where every
setting looks alike, and an excess loss over the optimal one falling from 5e-3 to 5e-4.
"""

from __future__ import annotations

import re

import matplotlib

matplotlib.use("Agg")

import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

import tfkit.plotting.render as render_module
from tfkit.cli.app import app

runner = CliRunner()
OPTIMAL = 1.0885
PLAIN = re.compile(r"^\d+(\.\d+)?k?$")  # 0.0005, 1.0894, 20k: no powers of ten


def ablation_rows(lrs=(1e-3,), excess=True) -> list[dict]:
    """depth x width (x lr) x 2 seeds x 6 evaluations, the columns an ablation writes."""
    rows = []
    for depth in (1, 2):
        for width in (32, 64):
            for lr in lrs:
                for seed in (0, 1):
                    setting = f"d{depth}w{width}lr{lr}"
                    for i in range(6):
                        gap = 5e-3 * 0.63**i * (1 + 0.1 * seed + 0.05 * depth + width / 640 + lr * 100)
                        row = {
                            "run_id": f"{setting}-s{seed}",
                            "setting_id": setting,
                            "run_num": seed,
                            "seed": seed,
                            "run_status": "completed",
                            "depth": depth,
                            "width": width,
                            "lr": lr,
                            "data": "mess3",
                            "activation": "gelu",
                            "num_params": 1000 * depth + 100 * width,
                            "step": 100 * (i + 1),
                            "tokens_seen": 64_000 * (i + 1),
                            "time_s": 1.0 + i + 0.3 * seed,
                            "val_loss": OPTIMAL + gap,
                            "train_loss": OPTIMAL + gap * 1.1,
                        }
                        if excess:
                            row |= {"optimal_loss": OPTIMAL, "excess_loss": gap}
                        rows.append(row)
    return rows


def write(tmp_path, rows, name="results.csv"):
    path = tmp_path / name
    pl.DataFrame(rows).write_csv(path)
    return path


@pytest.fixture
def drawn(monkeypatch):
    """Run `tfkit plot ...` and return the figure it saved."""
    figures = []
    real = render_module.render

    def keep(frame, template):
        figures.append(real(frame, template))
        return figures[-1]

    monkeypatch.setattr(render_module, "render", keep)

    def plot(*args):
        result = runner.invoke(app, ["plot", *map(str, args)], env={"COLUMNS": "200"})
        assert result.exit_code == 0, result.output
        figure = figures.pop()
        figure.canvas.draw()
        return figure

    return plot


def visible_ticks(axis) -> list[str]:
    """The labels of the major ticks inside the axis' view."""
    lo, hi = sorted(axis.get_view_interval())
    return [
        label.get_text()
        for loc, label in zip(axis.get_majorticklocs(), axis.get_ticklabels(), strict=True)
        if lo <= loc <= hi
    ]


def line(ax, label):
    return next(line for line in ax.get_lines() if line.get_label() == label)


def test_results_with_an_optimum_are_drawn_as_excess_loss_on_a_log_axis(tmp_path, drawn):
    results = write(tmp_path, ablation_rows())
    fig = drawn(results)
    (ax,) = fig.axes
    assert ax.get_ylabel() == "excess loss over optimal (nats)" and ax.get_yscale() == "log"
    assert fig._suptitle.get_text().startswith("Excess loss")
    expected = pl.DataFrame(ablation_rows()).filter((pl.col("depth") == 2) & (pl.col("width") == 32))
    expected = expected.group_by("tokens_seen").agg(pl.col("excess_loss").mean()).sort("tokens_seen")
    drawn_line = line(ax, "depth=2, width=32")
    assert list(drawn_line.get_xdata()) == expected["tokens_seen"].to_list()
    assert list(drawn_line.get_ydata()) == pytest.approx(expected["excess_loss"].to_list())
    assert (tmp_path / "results.png").is_file()  # the default picture keeps the default name


def test_loss_curves_stay_the_default_without_an_optimum_and_one_option_away_with_one(tmp_path, drawn):
    plain = write(tmp_path, ablation_rows(excess=False), "plain.csv")
    ax = drawn(plain).axes[0]
    assert ax.get_ylabel() == "loss (nats)" and ax.get_yscale() == "linear"
    assert {"val_loss", "train_loss"} <= set(fig_legend(ax))

    results = write(tmp_path, ablation_rows())
    ax = drawn(results, "--y", "val_loss").axes[0]  # the y label names the metric plotted
    assert ax.get_ylabel() == "val_loss" and ax.get_yscale() == "linear"
    ax = drawn(results, "-t", "loss_curves").axes[0]
    assert ax.get_ylabel() == "loss (nats)" and fig_legend(ax)[-2:] == ["val_loss", "train_loss"]
    assert (tmp_path / "results_loss_curves.png").is_file()
    fig = drawn(results, "-t", "final_vs_param", "--y", "excess_loss")
    assert fig.axes[0].get_ylabel() == "excess loss over optimal (nats)"
    assert not fig._suptitle.get_text().startswith("Final validation loss")  # the template's title named val_loss


def fig_legend(ax) -> list[str]:
    (legend,) = ax.figure.legends
    return [t.get_text() for t in legend.get_texts()]


def test_log_axes_over_a_narrow_range_read_plain_decimals(tmp_path, drawn):
    results = write(tmp_path, ablation_rows())
    ax = drawn(results, "-t", "final_vs_param").axes[0]  # val_loss 1.0889..1.0894, num_params 4.2k..8.4k
    for axis in (ax.yaxis, ax.xaxis):
        labels = visible_ticks(axis)
        assert len(labels) >= 3 and all(PLAIN.match(t) for t in labels), labels
        assert not any(t.get_text() for t in axis.get_ticklabels(minor=True))
    assert len(set(visible_ticks(ax.yaxis))) == len(visible_ticks(ax.yaxis))  # enough digits to tell them apart

    ax = drawn(results).axes[0]  # excess loss over one decade: 1-2-5 steps
    labels = visible_ticks(ax.yaxis)
    assert {"0.001", "0.002"} <= set(labels) and all(PLAIN.match(t) for t in labels), labels


def test_the_legend_covers_no_data(tmp_path, drawn):
    results = write(tmp_path, ablation_rows())
    for args in ([], ["-t", "loss_curves"], ["-t", "final_vs_param"]):
        fig = drawn(results, *args)
        (ax,) = fig.axes
        assert ax.get_legend() is None
        (legend,) = fig.legends
        assert not legend.get_window_extent().overlaps(ax.get_window_extent()), args


def test_final_vs_param_names_what_varies_and_colours_by_what_is_not_the_size(tmp_path, drawn):
    ax = drawn(write(tmp_path, ablation_rows()), "-t", "final_vs_param").axes[0]
    assert fig_legend(ax) == ["depth ∈ {1, 2}, width ∈ {32, 64}"]

    ax = drawn(write(tmp_path, ablation_rows(lrs=(1e-3, 3e-3)), "lr.csv"), "-t", "final_vs_param").axes[0]
    assert fig_legend(ax) == [
        "lr=0.001 (depth ∈ {1, 2}, width ∈ {32, 64})",
        "lr=0.003 (depth ∈ {1, 2}, width ∈ {32, 64})",
    ]
    colours = {c.get_label(): c.lines[0].get_color() for c in ax.containers}
    assert len(set(colours.values())) == 2
    assert all(len(c.lines[0].get_xdata()) == 4 for c in ax.containers)  # one point per size, never pooled


def test_seeds_logged_at_different_x_are_averaged_on_a_common_grid(tmp_path, drawn):
    curves = {0: ([1.0, 2.0, 3.0, 4.0], [4.0, 3.0, 2.5, 1.0]), 1: ([1.5, 2.5, 3.5, 4.5], [5.0, 3.0, 2.0, 1.5])}
    rows = [
        {
            "run_id": f"r{seed}",
            "setting_id": "s",
            "seed": seed,
            "depth": 1,
            "step": 10 * (i + 1),
            "time_s": t,
            "val_loss": v,
            "run_status": "completed",
        }
        for seed, (ts, vs) in curves.items()
        for i, (t, v) in enumerate(zip(ts, vs, strict=True))
    ]
    fig = drawn(write(tmp_path, rows), "--x", "time_s", "--y", "val_loss", "--band", "minmax")
    (ax,) = fig.axes
    (mean,) = ax.get_lines()
    grid = np.array([1.5, 2.0, 2.5, 3.0, 3.5, 4.0])  # every logged time both seeds cover
    interpolated = np.array([np.interp(grid, ts, vs) for ts, vs in curves.values()])
    assert list(mean.get_xdata()) == pytest.approx(grid)
    assert list(mean.get_ydata()) == pytest.approx(interpolated.mean(axis=0))
    band = ax.collections[0].get_paths()[0].vertices[:, 1]
    assert band.min() == pytest.approx(interpolated.min()) and band.max() == pytest.approx(interpolated.max())

    ax = drawn(write(tmp_path, rows, "steps.csv"), "--x", "step", "--y", "val_loss").axes[0]
    (mean,) = ax.get_lines()  # logged at the same steps: the values themselves, to the last step
    assert list(mean.get_xdata()) == [10, 20, 30, 40] and list(mean.get_ydata()) == pytest.approx(
        [4.5, 3.0, 2.25, 1.25]
    )


@pytest.mark.parametrize(
    ("condition", "settings"),
    [
        ("depth IN (1, 2) AND width = 64", ["depth=1", "depth=2"]),
        ("depth = 1 OR width = 32", ["depth=1, width=32", "depth=1, width=64", "depth=2, width=32"]),
        ("NOT (depth = 2) AND width != 32", None),  # one setting left: no legend
        ("width IN (32) and activation = 'gelu'", ["depth=1", "depth=2"]),
        ('"num_params" BETWEEN 4000 AND 5500', ["depth=1", "depth=2"]),
    ],
)
def test_filters_are_polars_sql(tmp_path, drawn, condition, settings):
    fig = drawn(write(tmp_path, ablation_rows()), "--filter", condition)
    if settings is None:
        assert fig.legends == [] and len(fig.axes[0].get_lines()) == 1
    else:
        assert fig_legend(fig.axes[0]) == settings
