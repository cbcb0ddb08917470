"""`tfkit analyze beliefs` on a tiny trained run: table, files, JSON, the plot template, and bad input."""

from __future__ import annotations

import csv
import json
import shutil

import pytest
from typer.testing import CliRunner

from tests.conftest import TINY
from tfkit.analysis.beliefs import belief_columns, point_columns
from tfkit.cli.app import app
from tfkit.config import RunConfig
from tfkit.training.loop import train

runner = CliRunner()
LAYERS = ["embed", "block_1", "block_2", "final_norm", "all"]
FAST = ["--num-sequences", "200", "--device", "cpu"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A tiny mess3 run (2 layers, seq_len 8) with checkpoints at steps 10 and 20."""
    out = tmp_path_factory.mktemp("beliefs") / "run"
    config = RunConfig().with_updates({**TINY, "train.checkpoint_every": 10, "log.out": str(out)})
    assert train(config).status == "completed"
    return out


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_beliefs_writes_the_table_files_and_pictures(run_dir):
    result = runner.invoke(app, ["analyze", "beliefs", str(run_dir), "--checkpoints", "all", *FAST])
    assert result.exit_code == 0, result.output
    for layer in [*LAYERS, "token × position (one-hot)", "random init 1 − R²", "step 20"]:
        assert layer in result.output
    assert "over training" in result.output  # two checkpoints: the table of R² by step too
    rows = read_csv(run_dir / "beliefs.csv")
    assert list(rows[0]) == belief_columns(8)
    # per checkpoint: 5 trained probes, 5 at initialisation, 1 one-hot
    assert len(rows) == 2 * 11
    assert {(r["step"], r["tokens_seen"]) for r in rows} == {("10", "1280"), ("20", "2560")}
    trained = {(r["step"], r["layer"]): float(r["probe_r2"]) for r in rows if r["probed"] == "trained"}
    assert set(trained) == {(s, layer) for s in ("10", "20") for layer in LAYERS}
    assert all(-1 < v <= 1 for v in trained.values())
    # the controls do not depend on the checkpoint
    controls = [(r["probed"], r["layer"], r["probe_r2"]) for r in rows if r["probed"] != "trained"]
    assert controls[: len(controls) // 2] == controls[len(controls) // 2 :]
    saved = json.loads((run_dir / "beliefs.json").read_text())
    assert saved["process"] == "mess3" and saved["num_states"] == 3 and saved["seq_len"] == 8
    assert saved["fit_sequences"] == 150 and saved["held_out_sequences"] == 50
    assert [c["step"] for c in saved["checkpoints"]] == [10, 20] and len(saved["rows"]) == 22
    points = read_csv(run_dir / "belief_points.csv")
    assert list(points[0]) == point_columns(3)
    assert len(points) == (len(LAYERS) + 2) * 50 * 8  # every held-out point of every pictured probe
    for name in ("belief_simplex", "belief_simplex_controls", "belief_probe_over_training"):
        assert (run_dir / f"{name}.png").read_bytes()[:4] == b"\x89PNG"

    plotted = runner.invoke(
        app, ["plot", str(run_dir), "-t", "belief_probe_over_training", "-o", str(run_dir / "again.png")]
    )
    assert plotted.exit_code == 0, plotted.output
    assert (run_dir / "again.png").read_bytes()[:4] == b"\x89PNG"


def test_json_holds_the_analysis_and_the_files_keep_earlier_checkpoints(run_dir):
    assert (
        runner.invoke(app, ["analyze", "beliefs", str(run_dir), "--checkpoints", "all", "--no-plots", *FAST]).exit_code
        == 0
    )
    result = runner.invoke(app, ["analyze", "beliefs", str(run_dir), "--json", "--no-plots", *FAST])
    assert result.exit_code == 0, result.output
    printed = json.loads(result.output)
    assert len(printed["rows"]) == 11 and printed["checkpoints"][0]["tokens_seen"] == 2560  # the latest only
    assert str(run_dir / "beliefs.csv") in printed["files"]
    # the file keeps the earlier analysis of step 10 (same settings), with this one's rows for step 20
    saved = json.loads((run_dir / "beliefs.json").read_text())
    assert [c["step"] for c in saved["checkpoints"]] == [10, 20]
    assert [r for r in saved["rows"] if r["step"] == 20] == printed["rows"]
    assert len(read_csv(run_dir / "beliefs.csv")) == 22
    # other settings: the rows are not comparable, so the files hold this analysis alone
    other = runner.invoke(app, ["analyze", "beliefs", str(run_dir), "--json", "--no-plots", "--seed", "1", *FAST])
    assert other.exit_code == 0, other.output
    assert json.loads((run_dir / "beliefs.json").read_text())["rows"] == json.loads(other.output)["rows"]
    assert len(read_csv(run_dir / "beliefs.csv")) == 11


def one_error_line(result) -> str:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error:"), result.output
    return lines[0]


def test_bad_input_ends_in_one_line_and_exit_2(run_dir, tmp_path):
    missing = one_error_line(runner.invoke(app, ["analyze", "beliefs", str(tmp_path / "nowhere")]))
    assert "no such run directory" in missing

    empty = tmp_path / "empty"
    empty.mkdir()
    shutil.copy(run_dir / "train_config.json", empty / "train_config.json")
    assert "holds no checkpoint" in one_error_line(runner.invoke(app, ["analyze", "beliefs", str(empty)]))

    shards = tmp_path / "shards"
    shutil.copytree(run_dir / "checkpoints", shards / "checkpoints")
    config = json.loads((run_dir / "train_config.json").read_text())
    config["data"]["data"] = str(tmp_path / "tokenized")
    (shards / "train_config.json").write_text(json.dumps(config))
    line = one_error_line(runner.invoke(app, ["analyze", "beliefs", str(shards)]))
    assert "not on a built-in process" in line and "no hidden states" in line

    for options, words in [
        (["--checkpoints", "999"], "no checkpoint '999'"),
        (["--test-fraction", "1"], "--test-fraction"),
        (["--num-sequences", "1"], "--num-sequences"),
        (["--ridge", "-1"], "--ridge"),
        (["--device", "gpu"], "--device"),
    ]:
        assert words in one_error_line(runner.invoke(app, ["analyze", "beliefs", str(run_dir), *options]))
