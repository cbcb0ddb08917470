"""Ctrl-C stops at a step boundary, saves a checkpoint, marks the run interrupted, exits 130."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

from tests.conftest import tiny_cli_args


def test_sigint_saves_and_exits_130(tmp_path):
    out = tmp_path / "run"
    args = tiny_cli_args(out) + ["--max-steps", "1000000", "--quiet"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "tfkit", "train", "pretrain", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    log = out / "train_log.csv"
    deadline = time.time() + 120
    while time.time() < deadline and not (log.exists() and len(log.read_text().splitlines()) >= 3):
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "interrupted"
    checkpoints = list((out / "checkpoints").glob("*.pt"))
    assert [int(p.stem) for p in checkpoints] == [summary["tokens_seen"]]
    assert 0 < summary["step"] < 1_000_000
