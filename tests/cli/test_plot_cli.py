"""`tfkit plot` from the command line: outputs, overrides, listing, and bad input."""

from __future__ import annotations

import json

import polars as pl
import pytest
from typer.testing import CliRunner

from tfkit.cli.app import app

runner = CliRunner()


@pytest.fixture
def results(tmp_path):
    """A results file with the columns an ablation writes (2 settings x 2 seeds x 2 evaluations)."""
    rows = []
    for width in (32, 64):
        for seed in (0, 1):
            for step in (10, 20):
                rows.append(
                    {
                        "run_id": f"w{width}-s{seed}",
                        "setting_id": f"w{width}",
                        "run_num": seed,
                        "seed": seed,
                        "run_status": "running" if step == 10 else "completed",
                        "depth": 2,
                        "width": width,
                        "data": "mess3",
                        "num_params": width * 100,
                        "step": step,
                        "tokens_seen": step * 64,
                        "val_loss": 1.1 - step / 1000 - width / 1e5 + seed / 1e4,
                        "train_loss": 1.2 - step / 1000,
                        "val_relative_loss_1": 1.01,
                        "val_relative_loss_2": 1.02,
                    }
                )
    path = tmp_path / "results.csv"
    pl.DataFrame(rows).write_csv(path)
    return path


def test_default_picture_beside_the_input(results):
    result = runner.invoke(app, ["plot", str(results)])
    assert result.exit_code == 0, result.output
    out = results.with_name("results.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert str(out) in result.output.replace("\n", "")


@pytest.mark.parametrize(("suffix", "magic"), [(".svg", b"<?xml"), (".pdf", b"%PDF")])
def test_format_follows_the_extension(results, tmp_path, suffix, magic):
    out = tmp_path / "pics" / f"final{suffix}"
    args = [
        "plot",
        str(results),
        "-t",
        "final_vs_param",
        "--x",
        "width",
        "--no-logy",
        "--band",
        "minmax",
        "-o",
        str(out),
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert out.read_bytes().startswith(magic)


def test_options_override_the_template_and_list_templates(results, tmp_path):
    out = tmp_path / "pos.png"
    args = [
        "plot",
        str(results),
        "-t",
        "relative_loss_by_position",
        "--filter",
        "width == 64",
        "--agg",
        "median",
        "-o",
        str(out),
    ]
    assert runner.invoke(app, args).exit_code == 0 and out.exists()
    listed = runner.invoke(app, ["plot", "--list-templates", "--json"])
    names = {t["name"] for t in json.loads(listed.output)}
    assert {
        "loss_curves",
        "final_vs_param",
        "heatmap",
        "relative_loss_by_position",
        "lr_and_grad_norm",
        "dpo_rewards",
    } <= names
    custom = tmp_path / "mine.toml"
    custom.write_text('description = "x"\nkind = "final"\nx = "width"\ny = ["train_loss"]\n')
    assert runner.invoke(app, ["plot", str(results), "-t", str(custom), "-o", str(tmp_path / "m.png")]).exit_code == 0


@pytest.mark.parametrize(
    ("setup", "args", "message"),
    [
        ("empty", [], "is empty"),
        ("header", [], "has a header but no rows"),
        (None, ["-t", "nope"], "unknown template 'nope': shipped templates are "),
        (None, ["-t", "dpo_rewards"], "needs column(s) rewards_chosen"),
        (None, ["--filter", "width == 7"], "matches no rows; width has values [32, 64]"),
        (None, ["--filter", "width"], "--filter 'width' is not a condition (it gives Int64"),
        (None, ["--filter", "width IN (32"], "--filter 'width IN (32' is not a condition polars SQL reads"),
        (None, ["--filter", "dpeth IN (1, 2) OR width = 32"], "needs column(s) dpeth; the data has run_id"),
        (None, ["--filter", 'data = "mess3" OR width = 32'], "(text values go in single quotes: 'mess3') needs"),
        (None, ["--filter", "width == wide"], "width holds numbers, and 'wide' is not one"),
        (
            None,
            ["--filter", "width = 32 AND depth = 3"],
            "matches no rows; width has values [32, 64]; depth has values [2]",
        ),
        (None, ["--band", "wide"], "band must be one of std, minmax, ci95, none"),
        (None, ["-o", "x.gif"], "--out must end in .png, .svg or .pdf"),
        ("missing", [], "does not exist"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(results, setup, args, message):
    target = results
    if setup == "empty":
        results.write_text("")
    elif setup == "header":
        results.write_text("run_id,step,val_loss\n")
    elif setup == "missing":
        target = results.with_name("nothing.csv")
    before = sorted(p.name for p in results.parent.iterdir())
    result = runner.invoke(app, ["plot", str(target), *args])
    assert result.exit_code == 2, result.output
    assert message in result.output.replace("\n", " ")
    assert "Traceback" not in result.output
    assert sorted(p.name for p in results.parent.iterdir()) == before  # no image, no temp file
