"""Plot templates drawn from a real ablation's results: the figure's axes, legend, title and numbers."""

from __future__ import annotations

import math
import os
import statistics

import matplotlib

matplotlib.use("Agg")

import polars as pl
import pytest
from matplotlib.collections import PolyCollection
from typer.testing import CliRunner

from tfkit.cli.app import app
from tfkit.errors import TfkitError
from tfkit.plotting.data import load_runs
from tfkit.plotting.render import render
from tfkit.plotting.stats import aggregate, t95
from tfkit.plotting.templates import list_templates, load_template

FAST = ["--seq-len", "6", "--batch-size", "16", "--set", "data.val_examples=128", "--set", "data.train_sequences=512"]


@pytest.fixture(scope="module")
def ablation(tmp_path_factory):
    """A real `tfkit ablate` results file: 2 depths x 2 widths x 2 seeds, 3 evaluations each."""
    root = tmp_path_factory.mktemp("ablation")
    cwd = os.getcwd()
    os.chdir(root)
    try:
        args = [
            "ablate",
            "--depth",
            "1",
            "2",
            "--width",
            "16",
            "32",
            "--num-runs",
            "2",
            "--max-steps",
            "15",
            "--eval-every",
            "5",
            "--log-every",
            "5",
            "-c",
            *FAST,
        ]
        result = CliRunner().invoke(app, args)
    finally:
        os.chdir(cwd)
    assert result.exit_code == 0, result.output
    return root


def legend_texts(ax) -> list[str]:
    """The entries of the figure's one legend (it sits outside the axes)."""
    (legend,) = ax.figure.legends
    return [t.get_text() for t in legend.get_texts()]


def test_every_template_is_listed_with_a_description():
    names = {t.name: t for t in list_templates()}
    for name in (
        "loss_curves",
        "final_vs_param",
        "heatmap",
        "relative_loss_by_position",
        "lr_and_grad_norm",
        "dpo_rewards",
    ):
        assert names[name].description


def test_loss_curves_default(ablation):
    frame = load_runs([str(ablation / "results.csv")])
    fig = render(frame, load_template("loss_curves"))
    (ax,) = fig.axes
    assert ax.get_xlabel() == "tokens_seen" and ax.get_ylabel() == "loss (nats)"
    labels = legend_texts(ax)
    # a colour per setting, a line style per metric: each named once
    assert labels == [
        "depth=1, width=16",
        "depth=1, width=32",
        "depth=2, width=16",
        "depth=2, width=32",
        "val_loss",
        "train_loss",
    ]
    title = fig._suptitle.get_text()
    assert title.startswith("Loss curves") and "seq_len=6" in title and "max_steps=15" in title
    # the drawn line is the mean over the two seeds at every evaluation
    line = next(line for line in ax.get_lines() if line.get_label() == "depth=2, width=16")
    expected = (
        frame.filter((pl.col("depth") == 2) & (pl.col("width") == 16))
        .group_by("tokens_seen")
        .agg(pl.col("val_loss").mean())
        .sort("tokens_seen")
    )
    assert list(line.get_xdata()) == expected["tokens_seen"].to_list()
    assert list(line.get_ydata()) == pytest.approx(expected["val_loss"].to_list())
    assert len([c for c in ax.collections if isinstance(c, PolyCollection)]) == 8


def test_final_vs_param_heatmap_positions_and_lr(ablation):
    frame = load_runs([str(ablation / "results.csv")])
    fig = render(frame, load_template("final_vs_param"))
    (ax,) = fig.axes
    assert ax.get_xlabel() == "num_params" and ax.get_ylabel() == "val_loss"
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"

    fig = render(frame, load_template("final_vs_param").with_overrides({"x": "width", "logx": False, "logy": False}))
    assert legend_texts(fig.axes[0]) == ["depth=1", "depth=2"]

    fig = render(frame, load_template("heatmap"))
    ax = fig.axes[0]
    assert ax.get_xlabel() == "depth" and ax.get_ylabel() == "width"
    finals = frame.filter(pl.col("run_status") == "completed")
    cell = finals.filter((pl.col("depth") == 1) & (pl.col("width") == 32))["val_loss"].mean()
    assert f"{cell:.5g}" in [t.get_text() for t in ax.texts]

    fig = render(frame, load_template("relative_loss_by_position"))
    ax = fig.axes[0]
    assert ax.get_ylabel() == "val_relative_loss" and len(legend_texts(ax)) == 4
    line = ax.get_lines()[0]
    assert list(line.get_xdata()) == [1, 2, 3, 4, 5, 6]

    fig = render(frame, load_template("lr_and_grad_norm"))
    assert [a.get_title() for a in fig.axes] == ["current_lr", "grad_norm"]


def test_run_directories_and_globs(ablation):
    frame = load_runs([str(ablation / "runs/ablate/*")], source="train")
    assert frame["run_id"].n_unique() == 8 and {"current_lr", "lr", "depth", "setting_id"} <= set(frame.columns)
    fig = render(frame, load_template("lr_and_grad_norm"))
    assert legend_texts(fig.axes[0])[0] == "depth=1, width=16"
    # a run's own setting_id matches the ablation's
    results = load_runs([str(ablation / "results.csv")])
    assert set(frame["setting_id"]) == set(results["setting_id"])


def known_frame() -> pl.DataFrame:
    rows = []
    values = {
        ("a", 0): [3.0, 2.0],
        ("a", 1): [5.0, 1.0],
        ("a", 2): [4.0, 0.0],
        ("b", 0): [1.0, 1.0],
        ("b", 1): [2.0, 1.5],
    }
    for (setting, seed), losses in values.items():
        for step, loss in zip((10, 20), losses, strict=True):
            rows.append(
                {
                    "run_id": f"{setting}{seed}",
                    "setting_id": setting,
                    "seed": seed,
                    "depth": 1 if setting == "a" else 2,
                    "tokens_seen": step * 100,
                    "step": step,
                    "val_loss": loss,
                    "run_status": "completed",
                }
            )
    return pl.DataFrame(rows)


def test_mean_and_band_over_seeds_of_the_same_setting():
    frame = known_frame()
    template = load_template("loss_curves").with_overrides({"y": ["val_loss"]})
    fig = render(frame, template)
    ax = fig.axes[0]
    a_line = next(line for line in ax.get_lines() if line.get_label() == "depth=1")
    assert list(a_line.get_ydata()) == pytest.approx([4.0, 1.0])
    band = ax.collections[0].get_paths()[0].vertices[:, 1]
    std = statistics.stdev([3.0, 5.0, 4.0])  # 1.0 at step 10; also 1.0 at step 20
    assert min(band) == pytest.approx(1.0 - 1.0) and max(band) == pytest.approx(4.0 + std)

    stats = aggregate(frame.filter(pl.col("setting_id") == "a"), ["step"], "val_loss", "median", "minmax")
    assert (
        stats["centre"].to_list() == [4.0, 1.0]
        and stats["lo"].to_list() == [3.0, 0.0]
        and stats["hi"].to_list() == [5.0, 2.0]
    )
    ci = aggregate(frame.filter(pl.col("setting_id") == "b"), ["step"], "val_loss", "mean", "ci95")
    half = t95(2) * statistics.stdev([1.0, 2.0]) / math.sqrt(2)
    assert ci["lo"][0] == pytest.approx(1.5 - half) and ci["hi"][0] == pytest.approx(1.5 + half)
    none = aggregate(frame, ["setting_id", "step"], "val_loss", "mean", "none")
    assert (none["lo"] == none["centre"]).all()


def test_dpo_rewards_template_on_dpo_columns():
    rows = [
        {
            "run_id": f"r{seed}",
            "setting_id": "s",
            "seed": seed,
            "step": step,
            "rewards_chosen": 0.1 * step,
            "rewards_rejected": -0.1 * step,
            "rewards_margins": 0.2 * step,
            "rewards_accuracies": 0.5 + 0.01 * step,
        }
        for seed in (0, 1)
        for step in (1, 2, 3)
    ]
    fig = render(pl.DataFrame(rows), load_template("dpo_rewards"))
    assert [a.get_title() for a in fig.axes] == [
        "rewards_chosen",
        "rewards_rejected",
        "rewards_margins",
        "rewards_accuracies",
    ]
    assert list(fig.axes[2].get_lines()[0].get_ydata()) == pytest.approx([0.2, 0.4, 0.6])


def test_missing_columns_and_filters_name_what_exists(ablation):
    frame = load_runs([str(ablation / "results.csv")])
    with pytest.raises(TfkitError, match=r"needs column\(s\) rewards_chosen.*the data has run_id, setting_id"):
        render(frame, load_template("dpo_rewards"))
    with pytest.raises(TfkitError, match=r"matches no rows; depth has values \[1, 2\]"):
        render(frame, load_template("loss_curves").with_overrides({"filter": ["depth == 4"]}))
    with pytest.raises(TfkitError, match="needs column"):
        render(frame, load_template("loss_curves").with_overrides({"filter": ["dpeth == 4"]}))
    fig = render(frame, load_template("loss_curves").with_overrides({"filter": ["depth == 2 and width >= 32"]}))
    assert legend_texts(fig.axes[0]) == ["val_loss", "train_loss"]
    simple = ["activation == relu2 && depth = 2", "width == 32"]  # unquoted text, `&&`, `=`: the simple form
    fig = render(frame, load_template("loss_curves").with_overrides({"filter": simple}))
    assert legend_texts(fig.axes[0]) == ["val_loss", "train_loss"]
    assert "depth=2" in fig._suptitle.get_text() and "width=32" in fig._suptitle.get_text()


def test_settings_of_every_run_kind_are_recognised():
    from tfkit.ablate.analysis import swept_columns

    frame = pl.DataFrame(
        {
            "run_id": ["a", "b"],
            "n_loops": [10, 20],
            "task": ["linear_regression"] * 2,
            "depth": [1, 1],
            "lr": [1e-3, 1e-3],
        }
    )
    swept, fixed = swept_columns(frame)
    assert swept == ["n_loops"]
    assert fixed == {"depth": 1, "lr": 1e-3, "task": "linear_regression"}


def grid_frame() -> pl.DataFrame:
    """Final rows of a depth x width x num_heads grid, two seeds; width 8 with 1 or 2 heads has one size."""
    rows = []
    for depth in (1, 2):
        for width, heads in ((4, 1), (8, 1), (8, 2)):
            for seed in (0, 1):
                loss = depth + width / 10 + heads / 100 + seed / 1000
                rows.append(
                    {
                        "run_id": f"{depth}-{width}-{heads}-{seed}",
                        "setting_id": f"{depth}-{width}-{heads}",
                        "seed": seed,
                        "depth": depth,
                        "width": width,
                        "num_heads": heads,
                        "step": 10,
                        "num_params": depth * 1000 + width * 10,
                        "val_loss": loss,
                        "run_status": "completed",
                    }
                )
    return pl.DataFrame(rows)


def test_final_vs_param_keeps_apart_settings_of_one_size():
    fig = render(grid_frame(), load_template("final_vs_param"))
    ax = fig.axes[0]
    # colour by what the size does not tell apart; depth and width vary along each line
    assert legend_texts(ax) == ["num_heads=1 (depth ∈ {1, 2}, width ∈ {4, 8})", "num_heads=2 (depth ∈ {1, 2}, width=8)"]
    two_heads = next(c for c in ax.containers if c.get_label().startswith("num_heads=2")).lines[0]
    assert list(two_heads.get_xdata()) == [1080, 2080]
    assert list(two_heads.get_ydata()) == pytest.approx([1.8205, 2.8205])  # mean over the two seeds only


def test_heatmap_has_a_panel_per_value_of_a_third_swept_column():
    fig = render(grid_frame(), load_template("heatmap"))
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in panels] == ["num_heads=1", "num_heads=2"]
    assert {t.get_text() for t in panels[1].texts} == {"1.8205", "2.8205"}  # width 8, two heads: never pooled
    assert {t.get_text() for t in panels[0].texts} == {"1.4105", "1.8105", "2.4105", "2.8105"}
    one = render(grid_frame().filter(pl.col("num_heads") == 1), load_template("heatmap"))
    assert len([ax for ax in one.axes if ax.get_images()]) == 1


def test_run_directories_carry_their_train_metrics_like_results(ablation):
    runs = load_runs([str(ablation / "runs/ablate/*")])
    results = load_runs([str(ablation / "results.csv")])
    columns = ["run_id", "step", "val_loss", "train_loss", "grad_norm", "current_lr"]
    assert runs.select(columns).sort("run_id", "step").equals(results.select(columns).sort("run_id", "step"))
    fig = render(runs, load_template("loss_curves"))  # the default picture works on run directories
    assert legend_texts(fig.axes[0])[-2:] == ["val_loss", "train_loss"] and "depth=1, width=16" in legend_texts(
        fig.axes[0]
    )
