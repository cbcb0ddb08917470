"""`tfkit train pretrain` through the real CLI: runs, precedence of options, user errors."""

from __future__ import annotations

import csv
import json

import pytest
from typer.testing import CliRunner

from tests.conftest import tiny_cli_args
from tfkit.cli._options import cli_fields
from tfkit.cli.app import app

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, list(args))


def test_pretrain_writes_a_run_and_prints_a_summary(tmp_path):
    out = tmp_path / "run"
    result = invoke("train", "pretrain", *tiny_cli_args(out))
    assert result.exit_code == 0, result.output
    assert "excess loss" in result.output and "optimal loss" in result.output
    for name in ("train_config.json", "train_log.csv", "val_log.csv", "summary.json"):
        assert (out / name).is_file()
    assert list((out / "checkpoints").glob("*.pt"))


def test_json_summary(tmp_path):
    result = invoke("train", "pretrain", *tiny_cli_args(tmp_path / "run"), "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["status"] == "completed"
    assert summary["step"] == 20
    assert summary["run_dir"] == str(tmp_path / "run")


def test_every_cli_field_is_an_option():
    result = runner.invoke(app, ["train", "pretrain", "--help"], env={"COLUMNS": "300"})
    assert result.exit_code == 0
    for field in cli_fields():
        assert field.flag in result.output, field.flag


def test_yaml_then_options_then_set(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("model:\n  depth: 1\n  width: 48\noptim:\n  lr: 0.002\n")
    out = tmp_path / "run"
    args = tiny_cli_args(out)
    # drop the tiny depth/width so the YAML's depth survives and the typed width wins
    drop = {"--depth", "--width"}
    args = [a for i, a in enumerate(args) if a not in drop and (i == 0 or args[i - 1] not in drop)]
    result = invoke(
        "train",
        "pretrain",
        "--config",
        str(config),
        *args,
        "--width",
        "32",
        "--set",
        "optim.weight_decay=0.05",
        "--param",
        "x=0.2",
        "--quiet",
    )
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "train_config.json").read_text())
    assert saved["model"]["depth"] == 1  # from YAML
    assert saved["model"]["width"] == 32  # typed option beats YAML
    assert saved["optim"]["lr"] == 0.002
    assert saved["optim"]["weight_decay"] == 0.05
    assert saved["data"]["process_params"] == {"x": 0.2}
    assert saved["model"]["vocab_size"] == 3 and saved["model"]["max_seq_len"] == 8
    assert saved["meta"]["torch_version"] and saved["meta"]["tfkit_version"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--data", "nosuch"], "unknown dataset 'nosuch'"),
        (["--width", "65", "--num-heads", "2"], "--num-heads (2) must divide --width (65)"),
        (["--max-steps", "0"], "--max-steps must be positive"),
        (["--config", "missing.yaml"], "config file not found: missing.yaml"),
        (["--set", "model.nosuch=1"], "unknown option model.nosuch"),
        (["--param", "nosuch=1"], "nosuch"),
        (["--param", "x"], "--param expects name=value"),
        (["--device", "cuda:4095"], "CUDA"),  # no machine has that many
    ],
)
def test_user_errors_are_one_line_exit_2(tmp_path, args, message):
    result = invoke("train", "pretrain", "--out", str(tmp_path / "run"), "--max-steps", "5", *args)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "run" / "train_config.json").exists()


def test_yaml_with_unknown_key(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("model:\n  widht: 64\n")
    result = invoke("train", "pretrain", "--config", str(config))
    assert result.exit_code == 2
    assert "unknown option model.widht" in result.output and "did you mean 'width'" in result.output


def test_existing_run_is_not_overwritten(tmp_path):
    out = tmp_path / "run"
    assert invoke("train", "pretrain", *tiny_cli_args(out), "-q").exit_code == 0
    before = (out / "val_log.csv").read_bytes()
    result = invoke("train", "pretrain", *tiny_cli_args(out), "-q")
    assert result.exit_code == 2
    assert "already holds a run" in result.output
    assert (out / "val_log.csv").read_bytes() == before
    result = invoke("train", "pretrain", *tiny_cli_args(out), "-q", "--overwrite", "--max-steps", "10")
    assert result.exit_code == 0, result.output
    assert json.loads((out / "summary.json").read_text())["step"] == 10


def test_bad_choice_is_a_usage_error():
    result = invoke("train", "pretrain", "--activation", "tanh")
    assert result.exit_code == 2
    assert "tanh" in result.output


def test_default_warmup_fits_the_run_and_is_recorded(tmp_path):
    """A 20-step run warms up for 1 step (5%) and reaches its peak; --warmup-steps 50 keeps the old schedule."""
    for warmup, out in ((None, tmp_path / "short"), ("50", tmp_path / "fixed")):
        extra = [] if warmup is None else ["--warmup-steps", warmup]
        result = invoke("train", "pretrain", *tiny_cli_args(out), "--lr", "0.01", "--log-every", "1", *extra, "--quiet")
        assert result.exit_code == 0, result.output
        recorded = json.loads((out / "train_config.json").read_text())["optim"]["warmup_steps"]
        with open(out / "train_log.csv") as f:
            peak = max(float(row["current_lr"]) for row in csv.DictReader(f))
        if warmup is None:
            assert recorded == 1 and peak == pytest.approx(0.01)
        else:
            assert recorded == 50 and peak == pytest.approx(0.01 * 20 / 50)
