"""One run on two processes: `torchrun --nproc-per-node 2` with gloo on CPU, against one process.

Two ranks with --batch-size B train on exactly the sequences one process with 2B trains
on, and DDP averages their gradients, so the logged curve is the single process's up to
floating-point summation order. Rank 0 alone writes the run directory. Killing one rank
ends the whole run (torchrun stops the other), and the run resumes from its last
checkpoint. With `--parallel fsdp` the parameters are sharded and the checkpoints gathered,
and the run (killed and resumed) logs the numbers of the DDP run.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tfkit.cli.app import app

REPO = Path(__file__).resolve().parents[2]
KILLER = Path(__file__).parent / "killer"
ENV = {
    **os.environ,
    "OMP_NUM_THREADS": "1",
    "COLUMNS": "200",
    "WANDB_MODE": "offline",
    "PYTHONPATH": os.pathsep.join([str(KILLER), str(REPO)]),
}
for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
    ENV.pop(name, None)
SHAPE = [
    "--data",
    "mess3",
    "--positions",
    "rotary",
    "--depth",
    "2",
    "--width",
    "32",
    "--num-heads",
    "2",
    "--seq-len",
    "8",
    "--max-steps",
    "20",
    "--log-every",
    "5",
    "--eval-every",
    "10",
    "--checkpoint-every",
    "10",
    "--device",
    "cpu",
    "--dropout",
    "0.0",
    "--set",
    "data.train_sequences=1024",
    "--set",
    "data.val_examples=256",
    "--set",
    "optim.grad_accum_steps=2",
]
# the columns that depend on the clock, the machine or the process count, not on what is trained
CLOCK = {"time_s", "tokens_per_s", "mfu", "peak_memory_mb", "data_wait_frac"}


def torchrun(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "tfkit",
        "train",
        "pretrain",
        *args,
        "--quiet",
    ]
    return subprocess.run(command, env={**ENV, **(env or {})}, capture_output=True, text=True, timeout=300)


def rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def per_micro_batch(column: str) -> bool:
    """Columns measured on the logged micro-batch, which is rank 0's share of it: not the global batch's."""
    return column.startswith(("relative_loss_", "attn_logit_max", "output_logit_", "output_log_z"))


def numbers(path: Path) -> list[dict[str, float]]:
    return [
        {k: float(v) for k, v in row.items() if k not in CLOCK and v != "" and not per_micro_batch(k)}
        for row in rows(path)
    ]


def assert_close(a: list[dict[str, float]], b: list[dict[str, float]], rel: float) -> None:
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for x, y in zip(a, b, strict=False):
        assert x.keys() == y.keys()
        for key in x:
            assert x[key] == pytest.approx(y[key], rel=rel, abs=1e-7), (x["step"], key)


def assert_two_processes_log_what_one_does(args: list[str], out: Path) -> None:
    """`args` on two DDP processes at batch 8 (`out/two`) and on one at batch 16 (`out/one`): the same logs."""
    two = torchrun(*args, "--batch-size", "8", "--out", str(out / "two"))
    assert two.returncode == 0, two.stderr[-3000:]
    one = CliRunner().invoke(app, ["train", "pretrain", *args, "--batch-size", "16", "--out", str(out / "one")])
    assert one.exit_code == 0, one.output
    for log in ("train_log.csv", "val_log.csv"):
        assert_close(numbers(out / "two" / log), numbers(out / "one" / log), rel=1e-4)


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ddp") / "run"
    result = torchrun(*SHAPE, "--batch-size", "8", "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def test_two_processes_log_the_curve_of_one_process_with_the_global_batch(two_ranks, tmp_path):
    one = tmp_path / "one"
    result = CliRunner().invoke(app, ["train", "pretrain", *SHAPE, "--batch-size", "16", "--out", str(one), "--quiet"])
    assert result.exit_code == 0, result.output
    assert_close(numbers(two_ranks / "train_log.csv"), numbers(one / "train_log.csv"), rel=1e-5)
    assert_close(numbers(two_ranks / "val_log.csv"), numbers(one / "val_log.csv"), rel=1e-5)
    # logged as the global batch: 8 rows x 2 processes x 2 micro-batches
    assert {int(r["global_batch_size"]) for r in rows(two_ranks / "train_log.csv")} == {32}
    # written once, by rank 0: one row per logged step, one summary, the files of one run
    assert [int(r["step"]) for r in rows(two_ranks / "train_log.csv")] == [5, 10, 15, 20]
    summary = json.loads((two_ranks / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["tokens_seen"] == 20 * 32 * 8
    assert sorted(p.name for p in two_ranks.iterdir()) == sorted(p.name for p in one.iterdir())


def test_fsdp_killed_in_one_rank_resumes_to_the_losses_of_ddp(two_ranks, tmp_path):
    out = tmp_path / "run"
    tokens_at_20 = 20 * 32 * 8
    sharded = ["--parallel", "fsdp"]
    # rank 0 dies (kill -9) as it starts the checkpoint of step 20: torchrun ends rank 1 too
    killed = torchrun(
        *SHAPE, *sharded, "--batch-size", "8", "--out", str(out), env={"TFKIT_KILL_AT": f"{tokens_at_20}:1"}
    )
    assert killed.returncode != 0
    assert "exitcode" in killed.stderr and "-9" in killed.stderr  # torchrun names the rank that died and how
    assert not (out / "checkpoints" / f"{tokens_at_20}.pt").exists()
    assert (out / "checkpoints" / f"{tokens_at_20 // 2}.pt").exists()  # step 10: resumable
    # one process cannot continue a two-process run
    refused = CliRunner().invoke(
        app, ["train", "pretrain", *SHAPE, *sharded, "--batch-size", "8", "--out", str(out), "--resume", "auto"]
    )
    assert refused.exit_code == 2
    assert "trained on 2 process(es), this is 1" in refused.output
    resumed = torchrun(*SHAPE, *sharded, "--batch-size", "8", "--out", str(out), "--resume", "auto")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    # sharded or replicated, the same global batches and updates: DDP's numbers
    for log in ("train_log.csv", "val_log.csv"):
        assert_close(numbers(out / log), numbers(two_ranks / log), rel=1e-5)
    assert json.loads((out / "summary.json").read_text())["status"] == "completed"
    # the checkpoint is gathered into one file that a single process reads like any other (--init, generate)
    import torch

    from tfkit.training.load import load_run

    model = load_run(str(out), "--init").build(torch.device("cpu"))
    reference = load_run(str(two_ranks), "--init").build(torch.device("cpu"))
    for (name, p), q in zip(model.state_dict().items(), reference.state_dict().values(), strict=False):
        assert torch.allclose(p, q, rtol=1e-4, atol=1e-6), name


def test_only_pretraining_runs_on_several_processes(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    result = CliRunner().invoke(
        app, ["train", "icl", "--max-steps", "2", "--device", "cpu", "--out", str(tmp_path / "icl")]
    )
    assert result.exit_code == 2
    assert "under torchrun only `tfkit train pretrain`" in result.output
