"""The README's main job: mess3 to within 0.001 nats of the Bayes-optimal loss on CPU."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_mess3_reaches_the_optimum(tmp_path):
    out = tmp_path / "m3"
    cmd = [
        sys.executable,
        "-m",
        "tfkit",
        "train",
        "pretrain",
        "--data",
        "mess3",
        "--depth",
        "2",
        "--width",
        "64",
        "--num-heads",
        "2",
        "--seq-len",
        "10",
        "--max-steps",
        "800",
        "--out",
        str(out),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    for label in ("val loss", "optimal loss", "excess loss"):
        assert label in proc.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert summary["excess_loss"] < 0.001
    assert abs(summary["optimal_loss"] - 1.0889) < 0.002  # about 0.01 nats under ln 3
    assert {p.name for p in out.iterdir()} >= {
        "train_config.json",
        "train_log.csv",
        "val_log.csv",
        "summary.json",
        "checkpoints",
    }
    with open(out / "val_log.csv") as f:
        header = next(csv.reader(f))
    assert {"val_loss", "optimal_loss", "excess_loss", "val_loss_10", "optimal_loss_10", "val_relative_loss_10"} <= set(
        header
    )
