"""`tfkit ablate icl`: sweeping the icl options with the results file, seeds and resume of `tfkit ablate`."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import polars as pl
from typer.testing import CliRunner

from tfkit.ablate.grid import parse_sweeps
from tfkit.ablate.jobs import RunJob
from tfkit.ablate.kinds import kind_of
from tfkit.ablate.plan import plan_ablation
from tfkit.cli.app import app
from tfkit.config.icl import ICL_SECTIONS, IclRunConfig

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


def ablate(tmp_path: Path, *args: str):
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        return runner.invoke(app, ["ablate", "icl", *args, *TINY])
    finally:
        os.chdir(cwd)


def test_sweeping_loops_writes_results_and_resumes(tmp_path):
    args = ["--n-loops", "1", "2", "3", "--loop-window", "2", "--num-runs", "2", "-c", "--logfile", "icl.csv"]
    result = ablate(tmp_path, *args)
    assert result.exit_code == 0, result.output
    assert "skipped n_loops=1: --loop-window 2 is larger than --n-loops 1" in result.output
    df = pl.read_csv(tmp_path / "icl.csv")
    finals = df.filter(pl.col("run_status") == "completed")
    assert sorted(finals["n_loops"].to_list()) == [2, 2, 3, 3] and set(finals["seed"]) == {0, 1}
    assert (finals["step"] == 4).all() and df.height == 8  # two evaluations per run
    for column in (
        "val_loss",
        "train_loss",
        "val_loss_11",
        "least_squares_loss_11",
        "averaging_loss_11",
        "val_loss_loop_4",
        "curriculum_loops",
        "num_params",
        "task",
        "loop_window",
    ):
        assert finals[column].null_count() == 0, column
    # eval_loops is resolved per run (2 x n_loops); the 2-loop runs have no loop 5 and 6
    assert finals.filter(pl.col("n_loops") == 2)["val_loss_loop_5"].null_count() == 2
    assert finals.filter(pl.col("n_loops") == 2)["eval_loops"].to_list() == [4, 4]
    assert (tmp_path / finals["run_dir"][0] / "val_log.csv").is_file()

    again = ablate(tmp_path, *args, "--append")
    assert again.exit_code == 0, again.output
    assert "All 4 runs are done" in again.output


def test_icl_grid_plan_and_worker_jobs(tmp_path):
    assert parse_sweeps(["loop.model=gpt,looped", "n_dims=5,10"], ICL_SECTIONS) == {
        "loop.model": ["gpt", "looped"],
        "task.n_dims": ["5", "10"],
    }
    base = IclRunConfig().with_updates({"width": 16, "num_heads": 2})
    plan = plan_ablation(base, {"task.n_points": [5, 9], "model.depth": [1, 2]}, num_runs=1, seed=0, runs_dir=tmp_path)
    assert len(plan.settings) == 4 and plan.varying == ["n_points", "depth"]
    assert "val_loss_9" in plan.columns and "val_loss_10" not in plan.columns and "epoch" not in plan.columns
    one, two = (plan.params[s.setting_id][0] for s in plan.settings[:3:2])  # depth 1 vs 2, 5 points
    assert one < two
    spec = plan.specs[0]
    job = pickle.loads(pickle.dumps(RunJob(spec, None, 1, str(tmp_path))))  # as a launcher submits it
    assert job.spec.config == spec.config and kind_of(job.spec.config).name == "icl"


def test_bad_icl_sweep_is_one_line_and_exit_2(tmp_path):
    result = ablate(tmp_path, "--task", "nope", "linear_regression", "--points-start", "20")
    assert result.exit_code == 2, result.output
    assert "no valid setting to train" in result.output and "Traceback" not in result.output


def test_looped_and_deep_models_in_one_grid(tmp_path):
    """Loop options do not apply to --model gpt: its points collapse into one setting, trained once."""
    args = ["--model", "gpt", "looped", "--n-loops", "2", "3", "-c", "--logfile", "both.csv"]
    result = ablate(tmp_path, *args)
    assert result.exit_code == 0, result.output
    assert "skipped model=gpt n_loops=3: same model as an earlier setting" in result.output
    finals = pl.read_csv(tmp_path / "both.csv").filter(pl.col("run_status") == "completed")
    assert sorted(finals.select("model", "n_loops").rows(), key=str) == [("gpt", None), ("looped", 2), ("looped", 3)]
    gpt = finals.filter(pl.col("model") == "gpt")
    assert gpt["val_loss_loop_1"].null_count() == 1 and finals["val_loss_loop_2"].null_count() == 1


def test_options_before_icl_are_refused_not_dropped(tmp_path):
    """`tfkit ablate --num-runs 2 icl` and `tfkit ablate --depth 4 8 icl` name what they would lose, write nothing."""
    for before, named in (
        (["--num-runs", "2"], "--num-runs"),
        (["--depth", "4", "8"], "--depth"),
        (["-c", "--logfile", "x.csv"], "--log-csv, --logfile"),
    ):
        cwd = os.getcwd()
        os.chdir(tmp_path)
        try:
            result = runner.invoke(app, ["ablate", *before, "icl", *TINY], env={"COLUMNS": "300"})
        finally:
            os.chdir(cwd)
        assert result.exit_code == 2, result.output
        assert result.output.count("\n") == 1 and "Traceback" not in result.output
        assert f"{named} before `icl` would not apply to it" in result.output
        assert not any(tmp_path.iterdir())
    # a value that happens to be "icl" for a one-value option is still a value
    named = ablate(tmp_path, "--name", "icl", "--dry-run")
    assert named.exit_code == 0, named.output
    # the multi-value form before no subcommand keeps working
    plain = runner.invoke(
        app, ["ablate", "--depth", "1", "2", "--width", "16", "--num-heads", "1", "2", "--num-runs", "5", "--dry-run"]
    )
    assert plain.exit_code == 0, plain.output
    assert "4 settings x 5 runs" in plain.output
