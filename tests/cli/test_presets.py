"""`--preset nanogpt | modern`: a recipe in one option, through `train pretrain`, `ablate` and resume.

A preset sets the options it names; any of them also given (typed, in --config, by --set,
swept) keeps the given value, whichever came first; a resumed run keeps its checkpoint's.
"""

from __future__ import annotations

import csv
import json

import pytest
from typer.testing import CliRunner

from tests.conftest import tiny_cli_args
from tfkit.cli.app import app
from tfkit.cli.train import build_config
from tfkit.config import RunConfig
from tfkit.config.presets import PRESETS

runner = CliRunner()


def recipe(config: dict) -> dict:
    """The values of the options the presets set, from a train_config.json."""
    return {key: config[key.split(".")[0]][key.split(".")[1]] for key in PRESETS["modern"]}


def pretrain(tmp_path, *args: str) -> dict:
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", "pretrain", *tiny_cli_args(out), "--max-steps", "2", *args])
    assert result.exit_code == 0, result.output
    return json.loads((out / "train_config.json").read_text())


def test_every_preset_names_the_same_options_and_builds_a_valid_config():
    keys = {frozenset(values) for values in PRESETS.values()}
    assert len(keys) == 1
    for name, values in PRESETS.items():
        config = RunConfig().with_updates({"model.preset": name})
        assert recipe(config.to_dict()) == values


@pytest.mark.parametrize("name", ["nanogpt", "modern"])
def test_pretrain_trains_the_presets_recipe(tmp_path, name):
    config = pretrain(tmp_path, "--preset", name)
    assert config["model"]["preset"] == name
    assert recipe(config) == PRESETS[name]


def test_options_given_anywhere_keep_their_values(tmp_path):
    yaml = tmp_path / "run.yaml"
    yaml.write_text("optim:\n  muon_lr: 0.05\n")
    config = pretrain(
        tmp_path, "--config", str(yaml), "--preset", "modern", "--lr", "0.01", "--set", "model.activation=swiglu"
    )
    expected = {**PRESETS["modern"], "optim.muon_lr": 0.05, "optim.lr": 0.01, "model.activation": "swiglu"}
    assert recipe(config) == expected


def test_a_preset_in_the_yaml_file_leaves_the_typed_options(tmp_path):
    yaml = tmp_path / "run.yaml"
    yaml.write_text("model:\n  preset: nanogpt\n")
    config = pretrain(tmp_path, "--config", str(yaml), "--norm", "rmsnorm")
    assert recipe(config) == {**PRESETS["nanogpt"], "model.norm": "rmsnorm"}


def test_another_preset_replaces_every_value_of_the_first():
    config = RunConfig().with_updates({"model.preset": "modern"}).with_updates({"model.preset": "nanogpt"})
    assert recipe(config.to_dict()) == PRESETS["nanogpt"]


def test_a_resumed_runs_config_is_its_checkpoints():
    """`--resume` starts from the saved config (all values given): the preset sets nothing again."""
    saved = RunConfig().with_updates({"model.preset": "modern"}).to_dict()
    saved["optim"]["lr"], saved["model"]["qk_norm"] = 0.01, False  # as a run with --lr 0.01 --no-qk-norm saved it
    resumed = build_config({"train.max_time_seconds": 60}, None, [], [], config_class=RunConfig, base=saved)
    assert resumed.to_dict()["model"] == saved["model"] and resumed.to_dict()["optim"] == saved["optim"]


def test_an_unknown_preset_is_one_line_and_exit_2(tmp_path):
    result = runner.invoke(app, ["train", "pretrain", *tiny_cli_args(tmp_path / "run"), "--preset", "gpt5"])
    assert result.exit_code == 2
    assert "nanogpt" in result.output and "modern" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "run").exists()


def test_ablate_sweeps_presets_and_keeps_the_fixed_options(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["ablate", *tiny_cli_args(tmp_path / "unused")[:-2], "--max-steps", "2", "--num-runs", "1", "-q", "-c"]
    result = runner.invoke(app, [*args, "--preset", "nanogpt", "modern", "--lr", "0.01"])
    assert result.exit_code == 0, result.output
    with open(tmp_path / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    seen = {row["preset"]: row for row in rows}
    assert set(seen) == {"nanogpt", "modern"}
    for name, row in seen.items():
        for key, value in {**PRESETS[name], "optim.lr": 0.01}.items():
            expected = str(value).lower() if isinstance(value, bool) else str(value)
            assert row[key.split(".")[1]] == expected, key


def test_x0_mix_is_an_option_that_both_presets_turn_off(tmp_path):
    assert pretrain(tmp_path / "a", "--x0-mix")["model"]["x0_mix"] is True
    assert pretrain(tmp_path / "b", "--preset", "modern", "--x0-mix")["model"]["x0_mix"] is True
    config = RunConfig().with_updates({"model.x0_mix": True}).with_updates({"model.preset": "nanogpt"})
    assert config.model.x0_mix is True  # given before the preset: kept
    assert RunConfig().with_updates({"model.preset": "modern"}).model.x0_mix is False


def test_with_only_a_shape_pretrain_ablate_and_budget_take_the_modern_recipe(tmp_path, monkeypatch):
    assert recipe(pretrain(tmp_path)) == PRESETS["modern"]
    monkeypatch.chdir(tmp_path)
    args = ["ablate", *tiny_cli_args(tmp_path / "unused")[:-2], "--max-steps", "2", "--num-runs", "1", "-q", "-c"]
    assert runner.invoke(app, [*args, "--depth", "1", "2"]).exit_code == 0
    with open(tmp_path / "results.csv", newline="") as f:
        for row in csv.DictReader(f):
            for key, value in PRESETS["modern"].items():
                expected = str(value).lower() if isinstance(value, bool) else str(value)
                assert row[key.split(".")[1]] == expected, key
    budget = runner.invoke(app, ["budget", "--data", "mess3", "--json"])
    assert budget.exit_code == 0 and json.loads(budget.stdout)["optimizer"] == "muon"
    shown = runner.invoke(app, ["train", "pretrain", "--help"], env={"COLUMNS": "200"})
    assert "(default: muon)" in shown.output and "(default: rotary)" in shown.output


def test_icl_and_fine_tuning_keep_adamw_without_an_average():
    from tfkit.config.finetune import DpoRunConfig, SftRunConfig
    from tfkit.config.icl import IclRunConfig

    for config in (IclRunConfig(), SftRunConfig(), DpoRunConfig()):
        assert (config.optim.optimizer, config.optim.ema_decay) == ("adamw", 0.0), type(config).__name__
    model = IclRunConfig().model
    assert (model.positions, model.norm, model.activation, model.qk_norm) == ("learned", "layernorm", "gelu", False)
    shown = runner.invoke(app, ["train", "icl", "--help"], env={"COLUMNS": "200"})
    assert "(default: adamw)" in shown.output and "(default: muon)" not in shown.output


def test_a_run_recorded_before_the_recipe_options_resumes_as_it_trained(tmp_path):
    """A checkpoint and train_config.json without the options the default recipe changed (written by an
    earlier tfkit) resume with the values runs had then: GPT-2's block, AdamW, no average."""
    from tfkit.training.checkpoint import load_checkpoint, save_checkpoint
    from tfkit.training.load import load_run

    steps = ["--max-steps", "4", "--checkpoint-every", "2", "--eval-every", "2"]
    classic = ["--preset", "nanogpt", "--lr", "3e-3"]
    whole, old = tmp_path / "whole", tmp_path / "old"
    args = [*tiny_cli_args(whole)[:-2], *steps]
    for out in (whole, old):
        assert runner.invoke(app, ["train", "pretrain", *args, *classic, "--out", str(out)]).exit_code == 0
    newer = ("positions", "norm", "activation", "qk_norm", "preset", "optimizer", "muon_ns_steps", "ema_decay")

    def strip(config: dict) -> dict:
        return {
            k: {n: v for n, v in s.items() if n not in newer} if isinstance(s, dict) else s for k, s in config.items()
        }

    record = json.loads((old / "train_config.json").read_text())
    (old / "train_config.json").write_text(json.dumps(strip(record)))
    checkpoint = min((old / "checkpoints").glob("*.pt"), key=lambda p: int(p.stem))  # step 2
    state = load_checkpoint(checkpoint)
    state["config"] = strip(state["config"])
    save_checkpoint(checkpoint, state)
    assert load_run(checkpoint).model_config.positions == "learned"  # what generate and --init build
    # the command it was started with then: no preset (the defaults were these values)
    resumed = runner.invoke(app, ["train", "pretrain", *args, "--out", str(old), "--resume", str(checkpoint)])
    assert resumed.exit_code == 0, resumed.output
    for log in ("train_log.csv", "val_log.csv"):
        with open(whole / log) as a, open(old / log) as b:
            columns = [k for k in next(csv.DictReader(a)) if "loss" in k]
            a.seek(0)
            assert [[r[k] for k in columns] for r in csv.DictReader(a)] == [
                [r[k] for k in columns] for r in csv.DictReader(b)
            ]
