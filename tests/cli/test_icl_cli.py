"""`tfkit train icl` through the real CLI: a tiny looped run, its CSV columns, options and user errors."""

from __future__ import annotations

import json

import polars as pl
import pytest
from typer.testing import CliRunner

from tfkit.cli._options import cli_fields
from tfkit.cli.app import app
from tfkit.cli.icl import EXCLUDED
from tfkit.config.icl import ICL_SECTIONS

runner = CliRunner()

TINY = [
    "--depth",
    "1",
    "--width",
    "16",
    "--num-heads",
    "2",
    "--batch-size",
    "8",
    "--max-steps",
    "4",
    "--eval-every",
    "2",
    "--log-every",
    "2",
    "--device",
    "cpu",
    "--set",
    "task.val_examples=32",
]


def test_looped_run_writes_the_icl_columns(tmp_path):
    out = tmp_path / "run"
    args = [
        "train",
        "icl",
        *TINY,
        "--model",
        "looped",
        "--n-loops",
        "3",
        "--loop-window",
        "2",
        "--dims-start",
        "3",
        "--dims-interval",
        "2",
        "--out",
        str(out),
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "least squares" in result.output and "averaging" in result.output
    train_log = pl.read_csv(out / "train_log.csv")
    assert train_log["curriculum_dims"].to_list() == [3, 4]  # rows after steps 2 and 4: 0-based steps 1 and 3
    assert set(train_log["curriculum_loops"]) == {3}
    val_log = pl.read_csv(out / "val_log.csv")
    for column in (
        "val_loss",
        "val_loss_1",
        "val_loss_11",
        "least_squares_loss_11",
        "knn_loss_11",
        "averaging_loss_11",
        "zero_loss_11",
        "val_loss_loop_1",
        "val_loss_loop_6",
        "curriculum_dims",
    ):
        assert val_log[column].null_count() == 0, column
    assert (val_log["least_squares_loss_11"] < 1e-6).all()  # 10 earlier points, d = 5, no noise
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["step"] == 4


def test_a_tiny_looped_model_leaves_the_zero_predictor_plateau(tmp_path):
    """ICL must learn: d=2, 6 points, a width-32 block looped 3 times, 200 steps of 256 prompts (~7 s).

    With the read-in at the blocks' init_std (the injected prompt ~20x smaller than the state)
    this run stays at the zero predictor (1.00 at the last point) for all 200 steps.
    """
    out = tmp_path / "run"
    args = [
        "train",
        "icl",
        "--n-dims",
        "2",
        "--n-points",
        "6",
        "--width",
        "32",
        "--n-loops",
        "3",
        "--loop-window",
        "2",
        "--lr",
        "1e-2",
        "--batch-size",
        "256",
        "--max-steps",
        "200",
        "--eval-every",
        "200",
        "--device",
        "cpu",
        "--set",
        "task.val_examples=256",
        "--out",
        str(out),
        "-q",
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    last = pl.read_csv(out / "val_log.csv").row(-1, named=True)
    assert last["zero_loss_6"] == pytest.approx(1.0, abs=0.1)
    assert last["val_loss_6"] < 0.9 * last["zero_loss_6"], (last["val_loss_6"], last["averaging_loss_6"])


def test_gpt_model_json_summary(tmp_path):
    result = runner.invoke(
        app, ["train", "icl", *TINY, "--model", "gpt", "--task", "relu_2nn", "--json", "--out", str(tmp_path / "run")]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["curriculum_loops"] == 1 and summary["run_dir"] == str(tmp_path / "run")
    assert "val_loss_loop_1" not in pl.read_csv(tmp_path / "run" / "val_log.csv").columns


def test_options_come_from_the_icl_config_and_pretrain_gets_none_of_them():
    icl_help = runner.invoke(app, ["train", "icl", "--help"], env={"COLUMNS": "300"}).output
    for field in cli_fields(ICL_SECTIONS):
        assert (field.flag in icl_help) == (field.name not in EXCLUDED), field.flag
    pretrain_help = runner.invoke(app, ["train", "pretrain", "--help"], env={"COLUMNS": "300"}).output
    for flag in ("--n-loops", "--loop-window", "--task", "--points-start", "--n-dims"):
        assert flag not in pretrain_help


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--task", "nosuch"], "unknown task 'nosuch'"),
        (["--points-start", "20"], "--n-points 11 (the end of the curriculum) is below --points-start 20"),
        (["--loops-start", "8", "--n-loops", "4"], "--n-loops 4 (the end of the curriculum) is below --loops-start 8"),
        (["--n-loops", "5", "--loop-window", "9"], "--loop-window 9 is larger than --n-loops 5"),
        (["--points-start", "5", "--points-inc", "0"], "--points-inc 0 never grows --points-start 5 to --n-points 11"),
        (["--model", "gpt", "--n-loops", "4"], "--n-loops applies to --model looped only"),
        (["--set", "train.max_epochs=1"], "there are no epochs"),
        (["--set", "task.nosuch=1"], "unknown option task.nosuch"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, args, message):
    result = runner.invoke(app, ["train", "icl", "--out", str(tmp_path / "run"), *args])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()
