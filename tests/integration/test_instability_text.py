"""Instabilities on real text (the `kjv` preset, one token per character): what the monitors and remedies show.

A deliberately unstable setting (learning rate 0.1, no clipping, no weight decay): without
qk-norm the largest attention logit grows to hundreds while qk-norm holds it near its
scale; z-loss pulls the output log Z towards 0. A run whose batches now and then hold a
stretch of text unlike the rest (a block of CJK characters amid the English) spikes, and
its spikes are the rows of `spikes.csv`, each above the threshold it was tested against.
"""

from __future__ import annotations

import csv
import random
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tfkit.cli.app import app

runner = CliRunner()
# the study's recipe: GPT-2's block and AdamW (benchmarks/instability_text.py)
MODEL = [
    "--preset",
    "nanogpt",
    "--depth",
    "1",
    "--width",
    "64",
    "--num-heads",
    "2",
    "--seq-len",
    "32",
    "--device",
    "cpu",
]


def invoke(*args: str) -> None:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output


def rows(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """30 chapters of the kjv preset and a block of 2,400 random CJK characters, one token per byte."""
    root = tmp_path_factory.mktemp("text")
    rng = random.Random(0)
    (root / "noise.txt").write_text("".join(chr(rng.randrange(0x4E00, 0x9FFF)) for _ in range(2400)))
    raw, tok = root / "raw", root / "tokenizer.json"
    invoke("data", "download", "kjv", str(root / "noise.txt"), "--split", "train[:30]", "--output-dir", str(raw), "-q")
    invoke("tokenizer", "train", "--dataset-dir", str(raw), "--vocab-size", "257", "--output-path", str(tok), "-q")
    shards = root / "shards"
    invoke(
        "tokenizer", "tokenize", "--dataset-dir", str(raw), "--tokenizer-path", str(tok), "--output-dir", str(shards)
    )
    return shards


def train(shards: Path, out: Path, *options: str) -> list[dict]:
    """A short run; its train rows."""
    invoke(
        "train", "pretrain", "--data", str(shards), *MODEL, "--set", "data.val_examples=16", "--out", str(out), *options
    )
    return rows(out / "train_log.csv")


def test_qk_norm_holds_attention_logits_and_z_loss_log_z(shards, tmp_path):
    unstable = ["--lr", "0.1", "--grad-clip", "0", "--weight-decay", "0", "--batch-size", "8", "--max-steps", "20"]
    unstable += ["--eval-every", "20", "--log-every", "5"]
    plain = train(shards, tmp_path / "plain", *unstable)
    qk = train(shards, tmp_path / "qk", *unstable, "--qk-norm")
    z = train(shards, tmp_path / "z", *unstable, "--z-loss", "1e-2")

    def peak(log: list[dict], column: str) -> float:
        return max(float(r[column]) for r in log)

    # every train row carries the monitor's columns, per layer too
    assert all(float(r["attn_logit_max"]) == float(r["attn_logit_max_1"]) > 0 for r in plain)
    assert peak(plain, "attn_logit_max") > 50
    assert peak(plain, "attn_logit_max") > 10 * peak(qk, "attn_logit_max")
    assert peak(qk, "attn_logit_max") < 20
    assert float(plain[-1]["output_log_z"]) > 1.0 + float(z[-1]["output_log_z"])


def test_a_run_that_spikes_on_text_leaves_its_spikes_csv_rows(shards, tmp_path):
    out = tmp_path / "spiky"
    detector = ["--set", "train.spike_window=8", "--set", "train.spike_min_history=8", "--set", "train.spike_sigma=4"]
    options = ["--lr", "1e-2", "--batch-size", "2", "--max-steps", "30", "--eval-every", "30", "--log-every", "5"]
    train(shards, out, *options, *detector, "--log-step-losses", "--seed", "4")
    spikes = rows(out / "spikes.csv")
    assert spikes, "no spike logged"
    steps = {int(r["step"]): float(r["train_loss"]) for r in rows(out / "step_losses.csv")}
    loss_spikes = []
    for spike in spikes:
        step, loss = int(spike["step"]), float(spike["train_loss"])
        assert spike["action"] == "log" and step > 8
        assert loss == pytest.approx(steps[step])  # the loss of that very step
        assert loss > float(spike["loss_threshold"]) or float(spike["grad_norm"]) > float(spike["grad_norm_threshold"])
        if loss > float(spike["loss_threshold"]):
            loss_spikes.append(step)
            # a loss spike stands out from the steps before it
            assert loss > 1.2 * max(steps[s] for s in range(step - 4, step))
    assert loss_spikes
