"""`--ema-decay`: a moving average of the weights, scored, saved, served and resumed; training itself unchanged."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from tests.conftest import TINY, tiny_cli_args
from tests.training.test_resume import assert_same_run, kill_and_resume, reference_run, rows
from tfkit.cli.app import app
from tfkit.config import RunConfig
from tfkit.data.loaders import open_source
from tfkit.models.gpt import GPT
from tfkit.training import loop
from tfkit.training.average import WeightAverage
from tfkit.training.checkpoint import latest_checkpoint, load_checkpoint
from tfkit.training.load import load_run

TOKENS_PER_STEP = TINY["data.batch_size"] * TINY["data.seq_len"]


def train(out: Path, **overrides) -> Path:
    config = RunConfig().with_updates({**TINY, "train.max_steps": 40, "log.out": str(out), **overrides})
    assert loop.train(config).status == "completed"
    return out


def val_losses(run: Path) -> list[float]:
    with open(run / "val_log.csv", newline="") as f:
        return [float(row["val_loss"]) for row in csv.DictReader(f)]


def test_the_average_is_what_is_scored_and_served_and_training_is_unchanged(tmp_path, one_thread):
    plain = train(tmp_path / "plain", **{"optim.ema_decay": 0})
    averaged = train(tmp_path / "averaged", **{"optim.ema_decay": 0.9})
    # the optimizer never reads the average: the same training losses and the same raw weights
    assert rows(averaged / "train_log.csv") == rows(plain / "train_log.csv")
    state = load_checkpoint(latest_checkpoint(averaged))
    raw = load_checkpoint(latest_checkpoint(plain))["model"]
    assert all(torch.equal(state["model"][k], raw[k]) for k in raw)
    # what is served (load_run: generate, --init, export) is the average, and differs from the weights
    served = load_run(averaged).state
    assert served.keys() == raw.keys()
    assert all(torch.equal(served[k], state["ema"][k]) for k in raw)
    assert any(not torch.equal(served[k], raw[k]) for k in raw)
    assert served["lm_head.weight"].data_ptr() != 0 and torch.equal(
        served["lm_head.weight"], served["transformer.wte.weight"]
    )  # tied: one parameter, one average
    # the validation rows score the average: the last one equals the served weights' loss
    assert val_losses(averaged)[-1] != val_losses(plain)[-1]
    for run in (plain, averaged):
        assert val_losses(run)[-1] == pytest.approx(_val_loss(load_run(run).build()), rel=1e-6)


def _val_loss(model: GPT) -> float:
    """The validation loss of a model on TINY's data, as the run's evaluation computes it."""
    config = RunConfig().with_updates(TINY)
    source = open_source(config.data, config.train.seed)
    metrics = loop.evaluate(model, source, torch.device("cpu"), "auto", TINY["data.batch_size"])
    return float(metrics["val_loss"])


def test_a_killed_run_with_an_average_resumes_bit_for_bit(tmp_path, one_thread):
    command = ["train", "pretrain", *tiny_cli_args(Path("unused"))[:-2]]
    command += ["--max-steps", "40", "--checkpoint-every", "10", "--ema-decay", "0.9"]
    reference = reference_run(command, tmp_path / "reference")
    resumed = kill_and_resume(command, tmp_path / "run", 30 * TOKENS_PER_STEP)
    assert_same_run(reference, resumed)
    ref, res = (load_checkpoint(latest_checkpoint(run))["ema"] for run in (reference, resumed))
    assert all(torch.equal(ref[k], res[k]) for k in ref)


def test_a_skipped_step_leaves_the_average_and_a_taken_one_moves_it():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    average = WeightAverage(model, decay=0.5)
    with torch.no_grad():
        model.weight.add_(1.0)
    before = [a.clone() for a in average.average]
    average.update(step=100, skip=torch.ones(()))
    assert all(torch.equal(a, b) for a, b in zip(average.average, before, strict=True))
    average.update(step=100, skip=torch.zeros(()))  # decay 0.5: halfway to the weights
    assert torch.allclose(average.average[0], before[0] + 0.5)
    average.update(step=0, skip=torch.zeros(()))  # warm-up: d_0 = 1/10, nearly the weights
    assert torch.allclose(average.average[0], model.weight.detach() - 0.05, atol=1e-6)


def test_applied_puts_the_weights_back_even_on_an_error():
    model = torch.nn.Linear(3, 2)
    average = WeightAverage(model, decay=0.9)
    own = model.weight.detach().clone()
    with torch.no_grad():
        average.average[0].zero_()
    with pytest.raises(RuntimeError), average.applied():
        assert torch.equal(model.weight, torch.zeros_like(own))
        raise RuntimeError("evaluation failed")
    assert torch.equal(model.weight, own)


@pytest.mark.parametrize("value", ["1", "-0.1"])
def test_an_ema_decay_outside_0_1_is_one_line_and_exit_2(tmp_path, value):
    result = CliRunner().invoke(app, ["train", "pretrain", *tiny_cli_args(tmp_path / "run"), "--ema-decay", value])
    assert result.exit_code == 2
    assert "--ema-decay must be in [0, 1)" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "run").exists()


def test_the_budget_counts_the_average():
    from tfkit.budget import estimate_budget

    config = RunConfig().with_updates(TINY)
    plain = estimate_budget(config.with_updates({"optim.ema_decay": 0})).memory
    averaged = estimate_budget(config.with_updates({"optim.ema_decay": 0.99})).memory
    assert plain["averaged_weights"] == 0
    assert averaged["averaged_weights"] == plain["weights"]
    assert averaged["total"] == plain["total"] + plain["weights"]
    shown = CliRunner().invoke(app, ["budget", "--data", "mess3", "--ema-decay", "0.9"], env={"COLUMNS": "200"})
    assert shown.exit_code == 0 and "averaged weights (--ema-decay, fp32)" in shown.output


@pytest.mark.slow
@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_processes_score_and_serve_the_average_one_process_does(parallel, tmp_path):
    """Replicated (DDP) or sharded (FSDP: each process averages its shard), the same average."""
    from tests.training.test_ddp import SHAPE, assert_two_processes_log_what_one_does

    # decay 0.5: past its warm-up (min(d, (1 + t) / (10 + t))) from step 8, so the evaluations see it
    args = [*SHAPE, "--parallel", parallel, "--ema-decay", "0.5", "--max-steps", "20", "--eval-every", "10"]
    args += ["--checkpoint-every", "20"]
    assert_two_processes_log_what_one_does(args, tmp_path)
    served = [load_run(tmp_path / run).state for run in ("two", "one")]
    for name, tensor in served[1].items():
        assert torch.allclose(served[0][name], tensor, rtol=1e-4, atol=1e-6), name
