"""The training loop: run directory, logged columns, stop criteria, checkpoints, bad steps."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch

from tfkit.config import RunConfig
from tfkit.data.loaders import open_source
from tfkit.errors import ConfigError
from tfkit.models.gpt import GPT
from tfkit.training.checkpoint import latest_checkpoint, load_checkpoint
from tfkit.training.columns import monitor_columns, pretrain_columns
from tfkit.training.loop import evaluate, train

TRAIN_COLUMNS = [
    "step",
    "tokens_seen",
    "epoch",
    "time_s",
    "current_lr",
    "global_batch_size",
    "seq_len",
    "train_loss",
    "grad_norm",
]
VAL_COLUMNS = [
    "step",
    "tokens_seen",
    "epoch",
    "time_s",
    "val_loss",
    "val_acc",
    "val_pplx",
    "optimal_loss",
    "excess_loss",
]


def read_csv(path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_run_directory_and_columns(tiny_config):
    result = train(tiny_config)
    run = result.run_dir
    assert result.status == "completed"
    train_rows = read_csv(run / "train_log.csv")
    val_rows = read_csv(run / "val_log.csv")
    assert list(train_rows[0])[: len(TRAIN_COLUMNS)] == TRAIN_COLUMNS
    assert list(val_rows[0])[: len(VAL_COLUMNS)] == VAL_COLUMNS
    seq_len = tiny_config.data.seq_len
    # pretrain_columns() announces the files' exact headers before a run (ablate relies on it)
    train_declared, val_declared = pretrain_columns(seq_len, has_optimum=True)
    monitor = monitor_columns(tiny_config.model.depth, output_logits=True, blocks=0)  # --log-logits, on by default
    assert (list(train_rows[0]), list(val_rows[0])) == (train_declared + monitor, val_declared)
    for i in range(1, seq_len + 1):
        assert f"relative_loss_{i}" in train_rows[0]
        for prefix in ("val_loss_", "optimal_loss_", "val_relative_loss_"):
            assert f"{prefix}{i}" in val_rows[0]
    assert [int(r["step"]) for r in train_rows] == [5, 10, 15, 20]
    assert [int(r["step"]) for r in val_rows] == [10, 20]
    last = val_rows[-1]
    # per-position columns are consistent with the aggregate ones
    per_pos = [float(last[f"val_loss_{i}"]) for i in range(1, seq_len + 1)]
    assert float(last["val_loss"]) == pytest.approx(np.mean(per_pos), rel=1e-9)
    opt_pos = [float(last[f"optimal_loss_{i}"]) for i in range(1, seq_len + 1)]
    assert float(last["optimal_loss"]) == pytest.approx(np.mean(opt_pos), rel=1e-9)
    assert float(last["excess_loss"]) == pytest.approx(float(last["val_loss"]) - float(last["optimal_loss"]))
    assert float(last["val_relative_loss_3"]) == pytest.approx(per_pos[2] / opt_pos[2])
    assert float(last["val_pplx"]) == pytest.approx(math.exp(float(last["val_loss"])))

    config = json.loads((run / "train_config.json").read_text())
    assert set(config) == {"model", "optim", "data", "train", "log", "meta"}
    assert config["train"]["seed"] == 0 and config["meta"]["device"] == "cpu"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert summary["val_loss"] == pytest.approx(float(last["val_loss"]))
    assert summary["num_params"] > summary["num_params_non_embedding"] > 0
    assert latest_checkpoint(run).name == f"{summary['tokens_seen']}.pt"
    assert summary["tokens_seen"] == 20 * 16 * 8


def test_optimal_loss_columns_match_the_exact_values(tiny_config):
    """The paired per-position optimum on the validation tokens is close to the exact expectation."""
    tiny_config = tiny_config.with_updates({"data.val_examples": 4096, "train.max_steps": 1})
    train(tiny_config)
    row = read_csv(tiny_config.log.out + "/val_log.csv")[-1]
    from tfkit.data.processes import get_process

    exact = get_process("mess3").optimal_loss(tiny_config.data.seq_len + 1)
    for i in range(1, tiny_config.data.seq_len + 1):
        assert float(row[f"optimal_loss_{i}"]) == pytest.approx(exact[i], abs=0.01)


@pytest.mark.parametrize(
    ("updates", "steps"),
    [
        ({"train.max_steps": None, "train.max_tokens": 16 * 8 * 7}, 7),  # tokens: 7 steps of 128
        ({"train.max_steps": None, "train.max_epochs": 0.5}, 32),  # 1024 sequences / 16 = 64 steps per epoch
        ({"train.max_steps": 12, "train.max_tokens": 10**9}, 12),  # first criterion wins
        ({"train.max_steps": 9, "optim.grad_accum_steps": 2}, 9),
    ],
)
def test_stop_criteria_and_final_eval(tiny_config, updates, steps):
    result = train(tiny_config.with_updates(updates))
    assert result.summary["step"] == steps
    val_rows = read_csv(result.run_dir / "val_log.csv")
    assert int(val_rows[-1]["step"]) == steps  # always a final evaluation
    accum = tiny_config.with_updates(updates).optim.grad_accum_steps
    assert result.summary["tokens_seen"] == steps * 16 * 8 * accum


def test_train_log_ends_at_the_last_step(tiny_config):
    # log_every 5: steps 5 and 10 by the cadence, and the last step 12 (a run shorter than log_every has one row)
    result = train(tiny_config.with_updates({"train.max_steps": 12}))
    rows = read_csv(result.run_dir / "train_log.csv")
    assert [int(r["step"]) for r in rows] == [5, 10, 12]
    assert rows[-1]["tokens_seen"] == str(result.summary["tokens_seen"]) and rows[-1]["train_loss"] != "nan"
    short = train(tiny_config.with_updates({"train.max_steps": 3, "log.out": str(result.run_dir) + "-short"}))
    assert [int(r["step"]) for r in read_csv(short.run_dir / "train_log.csv")] == [3]


def test_time_limit(tiny_config):
    result = train(tiny_config.with_updates({"train.max_steps": None, "train.max_time_seconds": 0.5}))
    assert result.status == "completed"
    assert result.summary["step"] >= 1
    assert read_csv(result.run_dir / "val_log.csv")[-1]["step"] == str(result.summary["step"])


def test_default_stop_when_none_given(tiny_config):
    config = tiny_config.with_updates({"train.max_steps": None})
    assert not config.has_stop_criterion()
    from tfkit.training.loop import resolve_config

    resolved = resolve_config(config, open_source(config.data, 0))
    assert resolved.train.max_steps == 1000


def test_eval_cadence_in_epochs(tiny_config):
    # 64 steps per epoch; eval_every is far away, so evaluations come from the epoch cadence
    config = tiny_config.with_updates(
        {"train.max_steps": 64, "train.eval_every": 1000, "train.max_epochs_between_evals": 0.25}
    )
    result = train(config)
    steps = [int(r["step"]) for r in read_csv(result.run_dir / "val_log.csv")]
    assert steps == [16, 32, 48, 64]


def test_checkpoint_round_trip_gives_the_same_val_loss(tiny_config):
    result = train(tiny_config.with_updates({"train.checkpoint_every": 10}))
    paths = sorted((result.run_dir / "checkpoints").glob("*.pt"), key=lambda p: int(p.stem))
    assert [int(p.stem) for p in paths] == [10 * 128, 20 * 128]
    state = load_checkpoint(paths[-1])  # weights_only=True
    assert state["step"] == 20 and state["tokens_seen"] == 20 * 128
    assert {"model", "optimizer", "rng", "config", "progress", "counters", "spikes", "task", "ema"} <= set(state)
    assert state["task"]["data_cursor"] == {"epoch": 0, "batch": 20}
    config = RunConfig.from_dict(state["config"])
    model = GPT(config.model)
    model.load_state_dict(state["ema"])  # the weights evaluations score (--ema-decay, on by default)
    source = open_source(config.data, config.train.seed)
    metrics = evaluate(model, source, torch.device("cpu"), "fp32", 64)
    assert metrics["val_loss"] == pytest.approx(result.summary["val_loss"], abs=1e-6)
    from tfkit.training.optim import build_optimizer

    optimizer = build_optimizer(model, config.optim, torch.device("cpu"))
    optimizer.load_state_dict(state["optimizer"])


def test_same_seed_same_run_and_different_seed_differs(tiny_config, tmp_path):
    a = train(tiny_config.with_updates({"log.out": str(tmp_path / "a")})).summary["val_loss"]
    b = train(tiny_config.with_updates({"log.out": str(tmp_path / "b")})).summary["val_loss"]
    c = train(tiny_config.with_updates({"log.out": str(tmp_path / "c"), "train.seed": 1})).summary["val_loss"]
    assert a == b
    assert a != c


def test_non_finite_steps_are_skipped_and_counted(tiny_config, monkeypatch):
    calls = {"n": 0}
    original = GPT.forward

    def flaky(self, idx):
        logits = original(self, idx)
        if self.training:
            calls["n"] += 1
            if calls["n"] in (3, 4, 5):
                return logits * float("nan")
        return logits

    monkeypatch.setattr(GPT, "forward", flaky)
    result = train(tiny_config)
    assert result.status == "completed"
    assert result.summary["skipped_steps"] == 3
    assert math.isfinite(result.summary["val_loss"])
    rows = read_csv(result.run_dir / "train_log.csv")
    assert [int(r["skipped_steps"]) for r in rows] == [3, 3, 3, 3]
    assert math.isfinite(float(rows[0]["train_loss"]))  # averaged over the good steps only


def test_too_many_bad_steps_fail_the_run(tiny_config, monkeypatch):
    original = GPT.forward
    monkeypatch.setattr(GPT, "forward", lambda self, idx: original(self, idx) * float("nan"))
    result = train(tiny_config.with_updates({"train.max_bad_steps": 5}))
    assert result.status == "failed"
    assert "non-finite steps in a row" in result.message
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["step"] == 5


def test_internal_error_marks_the_run_failed(tiny_config, monkeypatch):
    def boom(self, idx):
        raise RuntimeError("boom")

    monkeypatch.setattr(GPT, "forward", boom)
    with pytest.raises(RuntimeError, match="boom"):
        train(tiny_config)
    with open(tiny_config.log.out + "/summary.json") as f:
        summary = json.load(f)
    assert summary["status"] == "failed" and "boom" in summary["message"]


def test_refuses_vocab_smaller_than_data(tiny_config):
    with pytest.raises(ConfigError, match="smaller than the data's vocabulary"):
        train(tiny_config.with_updates({"model.vocab_size": 2}))


def test_train_rows_carry_throughput_mfu_and_memory(tiny_config):
    result = train(tiny_config.with_updates({"train.peak_flops": 1e12}))
    with open(result.run_dir / "train_log.csv") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        assert float(row["tokens_per_s"]) > 0 and 0 <= float(row["data_wait_frac"]) <= 1
        assert float(row["peak_memory_mb"]) > 10  # the process's peak resident set on CPU
    saved = json.loads((result.run_dir / "train_config.json").read_text())
    model = GPT(RunConfig.from_dict({k: v for k, v in saved.items() if k != "meta"}).model)
    expected = float(rows[-1]["tokens_per_s"]) * model.flops_per_token(8) / 1e12
    assert float(rows[-1]["mfu"]) == pytest.approx(expected, rel=1e-6)
    plain = train(tiny_config.with_updates({"log.out": str(result.run_dir) + "-cpu"}))
    with open(plain.run_dir / "train_log.csv") as f:
        assert next(csv.DictReader(f))["mfu"] == ""  # no known peak for a CPU
