"""Results columns keep their types when empty in every row, for Python readers and `tfkit plot`."""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")

import polars as pl
import pytest
from typer.testing import CliRunner

from tfkit.ablate.table import read_results, results_schema
from tfkit.cli.app import app

runner = CliRunner()
FAST = ["--seq-len", "6", "--batch-size", "8", "--set", "data.val_examples=64", "--set", "data.train_sequences=256"]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """An ablation with --max-tokens unset and no --model-scale; evaluations before any train log."""
    root = tmp_path_factory.mktemp("dtypes")
    cwd = os.getcwd()
    os.chdir(root)
    try:
        args = [
            "ablate",
            "--depth",
            "1",
            "--width",
            "16",
            "32",
            "--num-runs",
            "2",
            "--max-steps",
            "4",
            "--eval-every",
            "2",
            "--log-every",
            "10",
            "-c",
            *FAST,
        ]
        result = runner.invoke(app, args)
    finally:
        os.chdir(cwd)
    assert result.exit_code == 0, result.output
    return root / "results.csv"


def test_columns_empty_in_every_row_keep_their_types(results):
    df = read_results(results)  # what the README shows
    empty = ["max_tokens", "max_epochs", "model_scale", "checkpoint_every", "current_lr", "train_loss", "grad_norm"]
    assert all(df[name].null_count() == df.height for name in empty)  # the case this is about
    expected = {
        "max_tokens": pl.Int64,
        "checkpoint_every": pl.Int64,
        "max_epochs": pl.Float64,
        "model_scale": pl.Float64,
        "max_time_seconds": pl.Float64,
        "current_lr": pl.Float64,
        "train_loss": pl.Float64,
        "grad_norm": pl.Float64,
        "skipped_steps": pl.Int64,
        "depth": pl.Int64,
        "seed": pl.Int64,
        "lr": pl.Float64,
        "val_loss": pl.Float64,
        "qk_norm": pl.Boolean,
        "tie_embeddings": pl.Boolean,
        "activation": pl.String,
        "run_id": pl.String,
        "true_model_scale": pl.Float64,
    }
    assert {name: df.schema[name] for name in expected} == expected
    # the schema alone, for plain polars
    header = pl.read_csv(results, n_rows=0).columns
    assert pl.read_csv(results, schema_overrides=results_schema(header)).schema == df.schema


@pytest.mark.parametrize("args", [["--hue", "max_tokens"], ["--hue", "model_scale"]])
def test_plot_takes_an_empty_column_as_hue(results, args, tmp_path):
    out = tmp_path / "p.png"
    result = runner.invoke(app, ["plot", str(results), *args, "-o", str(out)], env={"COLUMNS": "120"})
    assert result.exit_code == 0, result.output
    assert out.stat().st_size > 0


def test_plot_reads_empty_columns_typed(results):
    from tfkit.plotting.data import load_runs

    frame = load_runs([str(results)])
    assert frame.schema["max_tokens"] == pl.Int64 and frame.schema["model_scale"] == pl.Float64


def test_reading_leaves_out_a_cut_off_row(results, tmp_path):
    torn = tmp_path / "torn.csv"
    torn.write_bytes(results.read_bytes() + b"abc123-s0,abc123,0,0,runn")
    assert read_results(torn).equals(read_results(results))
