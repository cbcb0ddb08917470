"""The templates of the text-instability study (benchmarks/instability_text.py), drawn from files the test writes."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import pytest

from tfkit.ablate.table import ID_COLUMNS
from tfkit.plotting.data import load_runs
from tfkit.plotting.render import render
from tfkit.plotting.templates import list_templates, load_template


def write_csv(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def points(ax) -> dict:
    """The data line of each labelled series of error bars (the `final` kind), by its label."""
    return {c.get_label(): c.lines[0] for c in ax.containers}


def legend_texts(fig) -> list[str]:
    (legend,) = fig.legends
    return [t.get_text() for t in legend.get_texts()]


def test_the_templates_are_listed():
    names = {t.name: t for t in list_templates()}
    for name in ("lr_sensitivity_by_width", "lr_sweep_by_width", "spike_curve"):
        assert names[name].description


def test_lr_sensitivity_against_width_one_line_per_remedy(tmp_path):
    # as the benchmark writes sensitivity.csv: one row per width, remedy and seed
    rows = [
        dict(run_id=f"w{w}-{r}-s{s}", setting_id=f"w{w}-{r}", seed=s, width=w, remedy=r, lr_sensitivity=value + s / 100)
        for w, factor in ((64, 1), (128, 2), (256, 4))
        for r, value in (("none", 0.1 * factor), ("qk-norm", 0.05))
        for s in (0, 1)
    ]
    frame = load_runs([str(write_csv(tmp_path / "sensitivity.csv", rows))])
    fig = render(frame, load_template("lr_sensitivity_by_width"))
    (ax,) = fig.axes
    assert ax.get_xlabel() == "width" and ax.get_xscale() == "log"
    assert ax.get_ylabel() == "LR sensitivity (nats)"
    assert legend_texts(fig) == ["remedy=none", "remedy=qk-norm"]
    lines = points(ax)
    none = lines["remedy=none"]
    assert list(none.get_xdata()) == [64, 128, 256]
    assert list(none.get_ydata()) == pytest.approx([0.105, 0.205, 0.405])  # the mean over the two seeds
    assert list(lines["remedy=qk-norm"].get_ydata()) == pytest.approx([0.055] * 3)


def _results(tmp_path: Path) -> Path:
    """A small results file as `tfkit ablate` writes it: 2 widths x 3 lrs x qk-norm x z-loss x 2 seeds."""
    rows = []
    for width in (64, 128):
        for lr in (1e-3, 1e-2, 1e-1):
            for qk in (False, True):
                for z in (0.0, 1e-4):
                    for seed in (0, 1):
                        setting = f"w{width}-lr{lr}-qk{qk}-z{z}"
                        # without qk-norm the widest model diverges at the top lr (a loss above ln 257)
                        loss = 9.0 if (width == 128 and lr == 1e-1 and not qk) else 3.0 - lr - width / 1000 + z * 1e3
                        row = dict(
                            zip(ID_COLUMNS, (f"{setting}-s{seed}", setting, seed, seed, "completed", ""), strict=True)
                        )
                        row |= dict(vocab_size=257, width=width, lr=lr, qk_norm=qk, z_loss=z, weight_decay=0.0)
                        row |= dict(step=100, tokens_seen=1600, val_loss=loss + seed / 100)
                        rows.append(row)
    return write_csv(tmp_path / "results.csv", rows)


def test_final_loss_against_lr_per_width_without_and_with_qk_norm(tmp_path):
    frame = load_runs([str(_results(tmp_path))])
    fig = render(frame, load_template("lr_sweep_by_width"))
    assert [ax.get_title() for ax in fig.axes] == ["qk_norm=False", "qk_norm=True"]
    off, on = fig.axes
    assert off.get_xscale() == "log" and off.get_xlabel() == "lr"
    labels = legend_texts(fig)
    assert any(label.startswith("width=64") for label in labels)
    assert any(label.startswith("width=128") for label in labels)
    assert "diverged (at the initial loss)" in labels
    # z-loss runs are left out (the template's filter): the line is the mean of the two seeds without it
    line = next(line for label, line in points(on).items() if label.startswith("width=64"))
    assert list(line.get_xdata()) == pytest.approx([1e-3, 1e-2, 1e-1])
    assert list(line.get_ydata()) == pytest.approx([3.0 - lr - 0.064 + 0.005 for lr in (1e-3, 1e-2, 1e-1)])
    # the diverged runs are drawn at ln(vocab)
    marks = [c for c in off.collections if c.get_label() == "diverged (at the initial loss)"]
    assert marks and marks[0].get_offsets()[0][1] == pytest.approx(math.log(257))


def test_spike_curve_marks_the_spikes_of_a_run(tmp_path):
    run = tmp_path / "run"
    steps = [dict(step=s, train_loss=3.0 + (2.0 if s in (40, 70) else 0.0), grad_norm=1.0) for s in range(1, 101)]
    write_csv(run / "step_losses.csv", steps)
    spikes = [
        dict(step=s, train_loss=5.0, grad_norm=1.0, loss_threshold=3.5, grad_norm_threshold=10.0, action="log")
        for s in (40, 70)
    ]
    write_csv(run / "spikes.csv", spikes)
    frame = load_runs([str(run / "step_losses.csv"), str(run / "spikes.csv")])
    fig = render(frame, load_template("spike_curve"))
    (ax,) = fig.axes
    assert ax.get_xlabel() == "step" and ax.get_ylabel() == "train loss (nats)"
    lines = {line.get_label(): line for line in ax.get_lines() if not line.get_label().startswith("_")}
    spike_line = next(line for label, line in lines.items() if "log" in label)
    assert list(spike_line.get_xdata()) == [40, 70] and list(spike_line.get_ydata()) == [5.0, 5.0]
    curve = next(line for label, line in lines.items() if "log" not in label)
    assert len(curve.get_xdata()) == 100
