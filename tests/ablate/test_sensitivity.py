"""LR sensitivity (Wortsman et al. 2023): known numbers by hand, diverged runs clipped, and through the CLI."""

from __future__ import annotations

import math

import polars as pl
import pytest
from typer.testing import CliRunner

from tests.conftest import tiny_cli_args
from tfkit.ablate.sensitivity import clip_diverged, lr_sensitivity
from tfkit.cli.app import app


def results(rows: list[tuple]) -> pl.DataFrame:
    """(width, lr, run_num, status, val_loss) -> a results-like frame; vocab 8, so l_0 = ln 8."""
    return pl.DataFrame(
        [
            {
                "run_id": f"w{w}-lr{lr}-r{r}",
                "setting_id": f"w{w}-lr{lr}",
                "run_num": r,
                "width": w,
                "lr": lr,
                "vocab_size": 8,
                "step": 100,
                "run_status": status,
                "val_loss": loss,
            }
            for w, lr, r, status, loss in rows
        ]
    )


def test_lr_sensitivity_by_hand_with_a_diverged_run_clipped_at_the_initial_loss():
    l0 = math.log(8)
    frame = results(
        [
            # width 16: seed 0 reaches 1.0 / 1.2 / 1.6 over the three lrs; seed 1 diverges at the largest
            (16, 1e-3, 0, "completed", 1.2),
            (16, 1e-2, 0, "completed", 1.0),
            (16, 1e-1, 0, "completed", 1.6),
            (16, 1e-3, 1, "completed", 1.3),
            (16, 1e-2, 1, "completed", 1.1),
            (16, 1e-1, 1, "failed", 1.05),
            # width 32: the same loss at every lr, and one above l_0 (counted as l_0)
            (32, 1e-3, 0, "completed", 1.0),
            (32, 1e-2, 0, "completed", 1.0),
            (32, 1e-1, 0, "completed", 9.0),
        ]
    )
    found = {s.group["width"]: s for s in lr_sensitivity(frame)}
    seed0 = (1.2 + 1.0 + 1.6) / 3 - 1.0
    seed1 = (1.3 + 1.1 + l0) / 3 - 1.1  # the failed run counts as l_0, not as its last 1.05
    assert found[16].sensitivity == pytest.approx((seed0 + seed1) / 2)
    assert found[16].std == pytest.approx(abs(seed0 - seed1) / math.sqrt(2))
    assert found[16].best_lr == 1e-2 and found[16].best_loss == pytest.approx(1.05)
    assert found[16].diverged == 1 and found[16].seeds == 2 and found[16].lrs == [1e-3, 1e-2, 1e-1]
    assert found[32].sensitivity == pytest.approx((1.0 + 1.0 + l0) / 3 - 1.0)
    assert found[32].diverged == 1
    clipped = clip_diverged(frame)
    assert clipped.filter(pl.col("diverged")).get_column("val_loss").to_list() == pytest.approx([l0, l0])


def test_lr_sensitivity_needs_several_learning_rates():
    from tfkit.errors import DataError

    with pytest.raises(DataError, match="at least two learning rates"):
        lr_sensitivity(results([(16, 1e-3, 0, "completed", 1.0)]))


def test_an_ablation_over_lr_prints_the_sensitivity_and_plots_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = [a for a in tiny_cli_args(tmp_path / "unused")[:-2]]
    runner = CliRunner()
    result = runner.invoke(
        app, ["ablate", *args, "--lr", "1e-3", "30", "--num-runs", "1", "-c", "--logfile", "res.csv", "--quiet"]
    )
    assert result.exit_code == 0, result.output
    assert "LR sensitivity" in result.output
    [line] = [line for line in result.output.splitlines() if "LR sensitivity" in line and "seed(s)" in line]
    [expected] = lr_sensitivity(tmp_path / "res.csv")
    assert f"LR sensitivity {expected.sensitivity:.4f}" in line
    frame = pl.read_csv(tmp_path / "res.csv")
    assert "attn_logit_max" in frame.columns and frame.get_column("attn_logit_max").drop_nulls().len() > 0
    for template in ("lr_sensitivity", "attn_logit_growth"):
        plotted = runner.invoke(app, ["plot", "res.csv", "-t", template, "-o", f"{template}.png"])
        assert plotted.exit_code == 0, plotted.output
        assert (tmp_path / f"{template}.png").stat().st_size > 10_000


def test_a_run_that_fails_before_its_first_evaluation_is_a_diverged_result(tmp_path, monkeypatch):
    # lr 1e9 blows up at once: the run fails (non-finite steps) before it is ever evaluated, and
    # still has its row in the results, counted at the initial loss by the LR sensitivity
    monkeypatch.chdir(tmp_path)
    args = [a for a in tiny_cli_args(tmp_path / "unused")[:-2]]
    result = CliRunner().invoke(
        app,
        [
            "ablate",
            *args,
            "--lr",
            "1e-3",
            "1e9",
            "--num-runs",
            "1",
            "--eval-every",
            "100",
            "--set",
            "train.max_bad_steps=2",
            "-c",
            "--logfile",
            "res.csv",
            "--quiet",
        ],
    )
    assert result.exit_code == 0, result.output
    frame = pl.read_csv(tmp_path / "res.csv")
    failed = frame.filter(pl.col("lr") == 1e9)
    assert failed.get_column("run_status").to_list() == ["failed"]
    [found] = lr_sensitivity(tmp_path / "res.csv")
    assert found.diverged == 1 and found.lrs == [1e-3, 1e9]
    assert found.sensitivity == pytest.approx((math.log(3) - found.best_loss) / 2, rel=1e-6)
