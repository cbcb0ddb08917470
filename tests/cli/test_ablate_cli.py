"""`tfkit ablate` end to end: multi-value parsing, the grid, results file, resume, jobs, Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from tfkit.cli.app import app

runner = CliRunner()

# small and fast: every run trains for a fraction of a second on CPU
FAST = ["--seq-len", "8", "--batch-size", "16", "--set", "data.val_examples=256", "--set", "data.train_sequences=1024"]
GRID = ["--depth", "1", "2", "--width", "32", "48", "--num-heads", "1", "3", "--num-runs", "2", "--max-steps", "30"]


def ablate(tmp_path: Path, *args: str):
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        return runner.invoke(app, ["ablate", *args, *FAST])
    finally:
        os.chdir(cwd)


def test_append_with_other_execution_options_trains_nothing(tmp_path):
    """Checkpoint, eval and log cadence are no part of a setting: --append finds every run done."""
    grid = ["--depth", "1", "2", "--width", "32", "--num-runs", "2", "--max-steps", "12"]
    first = ablate(tmp_path, *grid, "--checkpoint-every", "4", "-c", "--logfile", "r.csv")
    assert first.exit_code == 0, first.output
    before = pl.read_csv(tmp_path / "r.csv")
    again = ablate(
        tmp_path,
        *grid,
        "--checkpoint-every",
        "6",
        "--eval-every",
        "5",
        "--log-every",
        "3",
        "--keep-last",
        "1",
        "-c",
        "--logfile",
        "r.csv",
        "--append",
    )
    assert again.exit_code == 0, again.output
    assert "All 4 runs are done" in again.output
    assert pl.read_csv(tmp_path / "r.csv").equals(before)
    # a field of the identity is a new setting: it trains
    other = ablate(tmp_path, *grid, "--lr", "1e-3", "-c", "--logfile", "r.csv", "--append", "--dry-run")
    assert "4 of 4 runs to train" in other.output, other.output
    # and fields outside the identity cannot be swept
    swept = ablate(tmp_path, "--checkpoint-every", "4", "8", "--dry-run")
    assert swept.exit_code == 2


def test_space_separated_and_repeated_values_mean_the_same(tmp_path):
    spaced = ablate(tmp_path, "--depth", "4", "8", "--width", "192", "--seed", "5", "--num-runs", "2", "--dry-run")
    repeated = ablate(
        tmp_path, "--depth", "4", "--depth", "8", "--width=192", "--num-runs", "2", "--seed", "5", "--dry-run"
    )
    assert spaced.exit_code == 0, spaced.output
    assert spaced.output == repeated.output
    assert "2 settings x 2 runs" in spaced.output and "4 of 4 runs to train" in spaced.output
    # single-valued options before and after multi-valued ones, and several values in one --sweep
    mixed = ablate(
        tmp_path,
        "--num-runs",
        "1",
        "--lr",
        "1e-3",
        "3e-3",
        "--seed",
        "2",
        "--sweep",
        "optim.beta2=0.95,0.99",
        "--width",
        "64",
        "--dry-run",
    )
    assert mixed.exit_code == 0, mixed.output
    assert "4 settings x 1 runs" in mixed.output
    assert not list(tmp_path.iterdir())  # a dry run writes nothing


def test_grid_results_file_and_resume(tmp_path):
    result = ablate(tmp_path, *GRID, "-c", "--logfile", "r.csv")
    assert result.exit_code == 0, result.output
    assert "skipped depth=1 width=32 num_heads=3: --num-heads (3) must divide --width (32)" in result.output
    assert "skipped depth=2 width=32 num_heads=3" in result.output
    df = pl.read_csv(tmp_path / "r.csv")
    assert df["run_id"].n_unique() == 12 and df["setting_id"].n_unique() == 6
    assert df.filter(pl.col("width") == 32)["num_heads"].unique().to_list() == [1]
    seeds = df.group_by("setting_id").agg(pl.col("seed").unique().sort())["seed"].to_list()
    assert all(s == [0, 1] for s in seeds)
    finals = df.filter(pl.col("run_status") == "completed")
    assert finals.height == 12 and (finals["step"] == 30).all()
    for column in (
        "val_loss",
        "train_loss",
        "excess_loss",
        "num_params",
        "current_lr",
        "grad_norm",
        "tokens_seen",
        "val_loss_8",
    ):
        assert finals[column].null_count() == 0, column
    assert (tmp_path / finals["run_dir"][0] / "summary.json").exists()

    again = ablate(tmp_path, *GRID, "-c", "--logfile", "r.csv", "--append")
    assert again.exit_code == 0, again.output
    assert "All 12 runs are done" in again.output
    assert pl.read_csv(tmp_path / "r.csv").equals(df)

    # delete one run's rows: exactly that run is trained again, with the same result
    gone = df["run_id"][5]
    (tmp_path / "r.csv").write_text(
        "".join(
            line for line in (tmp_path / "r.csv").read_text().splitlines(keepends=True) if not line.startswith(gone)
        )
    )
    resumed = ablate(tmp_path, *GRID, "-c", "--logfile", "r.csv", "--append")
    assert resumed.exit_code == 0, resumed.output
    assert "Training 1 runs" in resumed.output and "11 already done" in resumed.output
    after = pl.read_csv(tmp_path / "r.csv")
    assert after["run_id"].n_unique() == 12
    assert (
        after.filter(pl.col("run_id") == gone)["val_loss"].to_list()
        == df.filter(pl.col("run_id") == gone)["val_loss"].to_list()
    )


def test_existing_results_are_never_overwritten_unasked(tmp_path):
    (tmp_path / "r.csv").write_text("a,b\n1,2\n")
    before = (tmp_path / "r.csv").read_bytes()
    result = ablate(tmp_path, "--depth", "1", "--max-steps", "5", "-c", "--logfile", "r.csv")
    assert result.exit_code == 2
    assert "r.csv already exists; pass --append" in result.output
    appended = ablate(tmp_path, "--depth", "1", "--max-steps", "5", "-c", "--logfile", "r.csv", "--append")
    assert appended.exit_code == 2 and "its columns differ" in appended.output
    assert (tmp_path / "r.csv").read_bytes() == before
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--width", "33", "--num-heads", "2"], "no valid setting to train"),
        (["--append"], "--append resumes from the results file: add -c"),
        (["--model-scale", "0.5", "--depth", "8"], "conflicts with --depth 8"),
        (["--sweep", "train.seed=1,2"], "seeds come from --seed and --num-runs"),
        (["--data", "nope"], "unknown dataset 'nope'"),
        (["--jobs", "0"], "--jobs must be at least 1"),
        (["--devices", "gpu0"], "--device must be"),
        # a device this machine lacks stops the ablation before any run (not every run failing on it)
        (["--device", "cuda:4095"], "--device cuda:4095: "),  # no machine has that many
        (["--devices", "cpu,cuda:4095"], "--devices cuda:4095: "),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, args, message):
    result = ablate(tmp_path, *args, "--max-steps", "5")
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "runs").exists()


def test_run_directories_are_not_replaced_unasked(tmp_path):
    first = ablate(tmp_path, "--depth", "1", "--max-steps", "5")
    assert first.exit_code == 0, first.output
    second = ablate(tmp_path, "--depth", "1", "--max-steps", "5")
    assert second.exit_code == 2 and "already holds a run" in second.output
    assert ablate(tmp_path, "--depth", "1", "--max-steps", "5", "--overwrite").exit_code == 0


def test_parallel_jobs_give_the_same_runs(tmp_path):
    args = ["--width", "32", "48", "--num-runs", "2", "--max-steps", "20", "-c"]
    one = ablate(tmp_path, *args, "--logfile", "one.csv", "--runs-dir", "runs/one")
    two = ablate(tmp_path, *args, "--logfile", "two.csv", "--runs-dir", "runs/two", "--jobs", "2")
    assert one.exit_code == 0 and two.exit_code == 0, two.output
    a = pl.read_csv(tmp_path / "one.csv").sort("run_id").select("run_id", "val_loss")
    b = pl.read_csv(tmp_path / "two.csv").sort("run_id").select("run_id", "val_loss")
    assert a["run_id"].to_list() == b["run_id"].to_list() and a.height == 4
    assert b["val_loss"].to_list() == pytest.approx(a["val_loss"].to_list(), rel=1e-4)


def test_ctrl_c_marks_the_run_incomplete_and_resume_finishes_it(tmp_path):
    args = [
        sys.executable,
        "-m",
        "tfkit",
        "ablate",
        "--depth",
        "1",
        "2",
        "--width",
        "32",
        "--num-heads",
        "2",
        "--max-steps",
        "1200",
        "--eval-every",
        "60",
        "--device",
        "cpu",
        "-c",
        "--logfile",
        "r.csv",
        *FAST,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # a tiny model: one thread, no fight for the cores
    proc = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    results = tmp_path / "r.csv"
    deadline = time.time() + 60
    while time.time() < deadline and (not results.exists() or len(results.read_text().splitlines()) < 3):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, out + err
    assert "interrupted; resume with: tfkit ablate --depth 1 2" in err and "--append" in err
    df = pl.read_csv(results)
    assert df["run_id"].n_unique() == 1  # the second run never started
    assert df["run_status"][-1] == "interrupted" and set(df["run_status"][:-1]) == {"running"}

    resumed = subprocess.run([*args, "--append"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "Re-running 1 unfinished runs" in resumed.stdout and "Training 2 runs" in resumed.stdout
    after = pl.read_csv(results)
    assert after["run_id"].n_unique() == 2
    assert after.filter(pl.col("run_status") != "running")["run_status"].to_list() == ["completed", "completed"]
    assert (after.group_by("run_id").len()["len"] == 1200 // 60).all()  # one row per eval, no partial rows


def test_wandb_runs_are_grouped_per_ablation_with_the_setting_as_config(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    from tests.tracking.test_wandb import finished_records

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    result = ablate(
        tmp_path, "--width", "32", "64", "--max-steps", "5", "-cw", "--wandb-project", "abl", "--logfile", "grid.csv"
    )
    assert result.exit_code == 0, result.output
    files = sorted(tmp_path.glob("runs/ablate/*/wandb/offline-run-*/run-*.wandb"))
    assert len(files) == 2
    widths = set()
    for path in files:
        run = next(r.run for r in finished_records(path) if r.WhichOneof("record_type") == "run")
        assert (run.project, run.run_group) == ("abl", "grid")
        config = {item.key: item.value_json for item in run.config.update}
        widths.add(config["width"])
    assert widths == {"32", "64"}


def test_true_model_scale_of_explicit_shapes_is_their_size_against_the_base(tmp_path):
    import torch

    from tfkit.ablate.table import read_results
    from tfkit.config import ModelConfig
    from tfkit.models.gpt import GPT

    result = ablate(tmp_path, "--depth", "1", "2", "--width", "32", "64", "--max-steps", "4", "--eval-every", "2", "-c")
    assert result.exit_code == 0, result.output
    df = read_results(tmp_path / "results.csv")
    assert df["model_scale"].null_count() == df.height  # no --model-scale: the shapes are given
    assert df.schema["true_model_scale"] == pl.Float64 and df["true_model_scale"].null_count() == 0
    finals = df.filter(pl.col("run_status") == "completed")
    assert finals.height == 4
    for row in finals.iter_rows(named=True):
        # parameters relative to the base model's (model.scale_base_depth x scale_base_width), counted apart
        shape = {name: row[name] for name in ("num_heads", "vocab_size", "max_seq_len")}
        with torch.device("meta"):
            base = GPT(ModelConfig(depth=row["scale_base_depth"], width=row["scale_base_width"], **shape))
        assert row["true_model_scale"] == pytest.approx(row["num_params"] / base.num_params(), rel=1e-12)
    assert finals.sort("num_params")["true_model_scale"].is_sorted()

    out = tmp_path / "scale.png"
    plot = runner.invoke(
        app, ["plot", str(tmp_path / "results.csv"), "-t", "final_vs_param", "--x", "true_model_scale", "-o", str(out)]
    )
    assert plot.exit_code == 0, plot.output
    assert out.stat().st_size > 0


def test_a_resumed_run_says_what_damage_of_its_logs_it_set_aside(tmp_path):
    """A run continued by --append cuts its logs back to its checkpoint; damage found there is a warning line."""
    grid = ["--depth", "1", "--width", "32", "--num-heads", "2", "--max-steps", "20", "--checkpoint-every", "10"]
    first = ablate(tmp_path, *grid, "-c", "--logfile", "r.csv")
    assert first.exit_code == 0, first.output
    results = pl.read_csv(tmp_path / "r.csv")
    # as if killed after step 20 before its last checkpoint, with a torn write at the end of its log
    results.with_columns(pl.lit("interrupted").alias("run_status")).write_csv(tmp_path / "r.csv")
    run = tmp_path / results["run_dir"][0]
    newest = max((run / "checkpoints").glob("[0-9]*.pt"), key=lambda p: int(p.stem))
    newest.unlink()
    Path(f"{newest}.sha256").unlink()
    (run / "summary.json").unlink()
    with open(run / "train_log.csv", "ab") as f:
        f.write(b"12,0.9\x00\x00garbage")

    resumed = ablate(tmp_path, *grid, "-c", "--logfile", "r.csv", "--append")
    assert resumed.exit_code == 0, resumed.output
    warnings = [line for line in resumed.output.splitlines() if line.startswith("Warning: ")]
    assert len(warnings) == 1 and "bytes that are not whole rows" in warnings[0], resumed.output
    assert any(p.name.startswith("train_log.csv.torn-") and p.name in warnings[0] for p in run.iterdir())
