"""The rolling-window spike test: thresholds against a plain computation, spikes clipped into the window."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from tests.conftest import tiny_cli_args
from tfkit.cli.app import app
from tfkit.training import loop
from tfkit.training.checkpoint import load_checkpoint
from tfkit.training.spikes import SpikeDetector


def test_thresholds_match_mean_plus_k_std_of_the_window():
    """The loss against mean + k·std of the recent losses, the grad norm against exp(mean + k·std) of their logs."""
    rng = np.random.default_rng(0)
    detector = SpikeDetector(window=8, sigma=3.0, min_history=4, device=torch.device("cpu"))
    seen: list[tuple[float, float]] = []
    for step in range(20):
        loss, norm = float(rng.normal(2.0, 0.1)), float(rng.normal(1.0, 0.05))
        spike, limits = detector.check(torch.tensor(loss), torch.tensor(norm))
        if len(seen) < 4:
            assert math.isinf(limits[0].item()) and not spike
        else:
            recent = np.array(seen[-8:])
            expected = recent.mean(0) + 3.0 * recent.std(0, ddof=1)
            expected[1] = math.exp(expected[1])
            assert np.allclose(limits.numpy(), expected, rtol=1e-5), step
        seen.append((loss, math.log(norm)))


def test_a_spike_is_flagged_and_enters_the_window_clipped_to_its_threshold():
    detector = SpikeDetector(window=16, sigma=6.0, min_history=8, device=torch.device("cpu"))
    for i in range(10):
        spike, _ = detector.check(torch.tensor(1.0 + 0.01 * (i % 3)), torch.tensor(0.5 + 0.01 * (i % 2)))
        assert not spike
    before = detector.thresholds().clone()
    spike, limits = detector.check(torch.tensor(1000.0), torch.tensor(0.5))
    assert spike and torch.equal(limits, before)
    after = detector.thresholds()
    assert before[0] < after[0] < 1.5  # the spike counted as its threshold, not as 1000
    spike, _ = detector.check(torch.tensor(1.0), torch.tensor(500.0))  # a grad-norm spike alone counts
    assert spike
    assert detector.thresholds()[1] < 1.0  # ... clipped too
    before = detector.thresholds().clone()
    spike, _ = detector.check(torch.tensor(float("nan")), torch.tensor(0.5))
    assert not spike and torch.equal(detector.thresholds(), before)  # non-finite: skipped elsewhere, not a spike
    state = detector.state_dict()
    other = SpikeDetector(window=16, sigma=6.0, min_history=8, device=torch.device("cpu"))
    other.load_state_dict(state)
    assert torch.equal(other.thresholds(), before)


def test_a_lasting_level_shift_is_taken_in_and_a_noisy_grad_norm_is_not_a_spike():
    """A loss that moved for good stops being flagged; a grad norm a few times the recent ones at an ordinary loss
    is no spike (the raw mean + 6·std rule flagged those on healthy runs), one 1000 times them is."""
    rng = np.random.default_rng(0)
    detector = SpikeDetector(window=128, sigma=6.0, min_history=32, device=torch.device("cpu"))
    for _ in range(200):  # a healthy run: the grad norm log-normal (heavy-tailed), the loss steady
        loss, norm = rng.normal(1.1, 0.003), math.exp(rng.normal(math.log(0.03), 0.6))
        spike, _ = detector.check(torch.tensor(loss), torch.tensor(norm))
        assert not spike
    assert not detector.check(torch.tensor(1.1), torch.tensor(0.3))[0]  # 10x the typical grad norm
    assert detector.check(torch.tensor(1.1), torch.tensor(30.0))[0]  # 1000x
    flagged = 0
    for _ in range(200):  # the loss moves up by 1000 standard deviations and stays there
        flagged += int(detector.check(torch.tensor(rng.normal(4.1, 0.003)), torch.tensor(0.03))[0])
    assert 0 < flagged < 64  # flagged at first, ordinary once the window has caught up


# --- the actions, on a real run with one poisoned batch -----------------------------------------

POISONED_STEP = 30  # 1-based: the 30th optimizer step sees a loss 1000 times too large


@pytest.fixture
def poisoned(monkeypatch, one_thread):
    """Multiply the loss of step POISONED_STEP by 1000, and record the parameters before each step (one thread)."""
    seen: dict[int, dict[str, torch.Tensor]] = {}
    begin, loss = loop.PretrainTask.begin_step, loop.PretrainTask.loss

    def begin_step(self, step):
        self.current = step + 1
        seen[step] = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        begin(self, step)

    def poisoned_loss(self, batch):
        value, metrics = loss(self, batch)
        if self.current == POISONED_STEP and not getattr(self, "poisoned", False):  # one batch: once
            self.poisoned = True
            return value * 1000, metrics
        return value, metrics

    monkeypatch.setattr(loop.PretrainTask, "begin_step", begin_step)
    monkeypatch.setattr(loop.PretrainTask, "loss", poisoned_loss)
    return seen


def spike_config(tiny_config, action, **updates):
    return tiny_config.with_updates(
        {
            "train.max_steps": 50,
            "train.spike_action": action,
            "train.spike_min_history": 10,
            "train.checkpoint_every": 20,
            "train.eval_every": 50,
            **updates,
        }
    )


def spike_rows(run_dir):
    with open(run_dir / "spikes.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_log_records_the_spike_and_trains_on(tiny_config, poisoned):
    result = loop.train(spike_config(tiny_config, "log"))
    assert result.status == "completed"
    [row] = spike_rows(result.run_dir)
    assert int(row["step"]) == POISONED_STEP and row["action"] == "log"
    assert float(row["train_loss"]) > 100 * float(row["loss_threshold"]) / 2 > 0


def test_skip_leaves_the_parameters_of_the_spike_step_unchanged(tiny_config, poisoned):
    result = loop.train(spike_config(tiny_config, "skip"))
    assert result.status == "completed" and result.summary["skipped_steps"] == 1  # the dropped update, counted
    before, after = poisoned[POISONED_STEP - 1], poisoned[POISONED_STEP]
    assert all(torch.equal(before[k], after[k]) for k in before)
    changed = poisoned[POISONED_STEP + 1]
    assert not all(torch.equal(after[k], changed[k]) for k in after)  # the next step trains again
    assert [r["action"] for r in spike_rows(result.run_dir)] == ["skip"]


def test_checkpoint_saves_the_state_before_the_update(tiny_config, poisoned):
    result = loop.train(spike_config(tiny_config, "checkpoint"))
    saved = load_checkpoint(result.run_dir / "checkpoints" / f"spike-{POISONED_STEP}.pt")
    before = poisoned[POISONED_STEP - 1]
    assert saved["progress"]["step"] == POISONED_STEP - 1
    assert all(torch.equal(before[k], saved["model"][k]) for k in before)
    assert [r["action"] for r in spike_rows(result.run_dir)] == ["checkpoint"]
    assert result.status == "completed"


def test_stop_ends_the_run_failed_at_the_spike(tiny_config, poisoned):
    result = loop.train(spike_config(tiny_config, "stop"))
    assert result.status == "failed" and "loss spike at step 30" in result.message
    assert result.summary["step"] == POISONED_STEP - 1
    assert [r["action"] for r in spike_rows(result.run_dir)] == ["stop"]


def test_rollback_continues_from_the_last_checkpoint_and_ends_near_a_clean_run(tiny_config, poisoned, tmp_path):
    result = loop.train(spike_config(tiny_config, "rollback", **{"train.log_step_losses": True}))
    assert result.status == "completed" and result.summary["step"] == 50
    [row] = spike_rows(result.run_dir)
    assert row["action"] == "rollback" and int(row["step"]) == POISONED_STEP
    # back to the checkpoint of step 20: steps 21..29 run again on the data after the spike's
    assert torch.equal(
        poisoned[20]["lm_head.weight"],
        load_checkpoint(result.run_dir / "checkpoints" / "2560.pt")["model"]["lm_head.weight"],
    )
    with open(result.run_dir / "train_log.csv", newline="") as f:
        steps = [int(r["step"]) for r in csv.DictReader(f)]
    assert steps == sorted(set(steps)) and steps[-1] == 50  # no duplicate rows after the rollback
    with open(result.run_dir / "step_losses.csv", newline="") as f:
        assert [int(r["step"]) for r in csv.DictReader(f)] == list(range(1, 51))  # steps 21..29 once, retrained
    config = json.loads((result.run_dir / "train_config.json").read_text())
    assert config["train"]["spike_action"] == "rollback"
    clean = loop.train(
        spike_config(tiny_config, "log", **{"log.out": str(tmp_path / "clean"), "train.spike_sigma": 1e9})
    )
    assert abs(result.summary["val_loss"] - clean.summary["val_loss"]) < 0.02


# --- skip: a lasting level shift, the bound on skips in a row ------------------------------------

SHIFT_STEP = 30  # 1-based: from this optimizer step on, every loss is 3 times what it was


@pytest.fixture
def shifted(monkeypatch):
    """Multiply every loss from step SHIFT_STEP on by 3 (a level shift), and record the parameters before each step."""
    seen: dict[int, dict[str, torch.Tensor]] = {}
    begin, loss = loop.PretrainTask.begin_step, loop.PretrainTask.loss

    def begin_step(self, step):
        self.current = step + 1
        seen[step] = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        begin(self, step)

    def shifted_loss(self, batch):
        value, metrics = loss(self, batch)
        return (value * 3, metrics) if self.current >= SHIFT_STEP else (value, metrics)

    monkeypatch.setattr(loop.PretrainTask, "begin_step", begin_step)
    monkeypatch.setattr(loop.PretrainTask, "loss", shifted_loss)
    return seen


def test_skip_takes_in_a_lasting_level_shift_and_trains_again(tiny_config, shifted, one_thread):
    """The window catches up with a loss that moved for good: the skips end, the model trains, they are counted."""
    result = loop.train(spike_config(tiny_config, "skip", **{"train.max_steps": 90}))
    assert result.status == "completed"
    steps = [int(r["step"]) for r in spike_rows(result.run_dir)]
    assert steps[0] == SHIFT_STEP and steps == list(range(SHIFT_STEP, steps[-1] + 1)) and steps[-1] < 80
    assert result.summary["skipped_steps"] == len(steps)
    frozen = shifted[SHIFT_STEP - 1]
    assert all(torch.equal(frozen[k], shifted[steps[-1]][k]) for k in frozen)  # no update while skipping
    assert not all(torch.equal(frozen[k], shifted[89][k]) for k in frozen)  # then it trains again
    with open(result.run_dir / "train_log.csv", newline="") as f:
        logged = {int(r["step"]): int(r["skipped_steps"]) for r in csv.DictReader(f)}
    assert logged[SHIFT_STEP - 5] == 0 and logged[90] == len(steps)


def test_skip_fails_the_run_after_too_many_spikes_in_a_row(tmp_path, shifted, one_thread):
    out = tmp_path / "run"
    result = CliRunner().invoke(
        app,
        [
            "train",
            "pretrain",
            *tiny_cli_args(out),
            "--max-steps",
            "90",
            "--spike-action",
            "skip",
            "--set",
            "train.spike_min_history=10",
            "--set",
            "train.spike_max_consecutive_skips=5",
            "--quiet",
        ],
    )
    assert result.exit_code == 1, result.output
    assert result.output.strip().splitlines() == [
        "Error: run failed: 6 loss spikes in a row skipped (--spike-action skip; train.spike_max_consecutive_skips=5): "
        "the model no longer trains; lower --lr or raise the limit"
    ]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["step"] == 35  # the first train row after the fifth skip
    assert summary["skipped_steps"] == 6  # steps 30..35
    bad = CliRunner().invoke(
        app, ["train", "pretrain", *tiny_cli_args(tmp_path / "bad"), "--set", "train.spike_max_consecutive_skips=0"]
    )
    assert bad.exit_code == 2 and bad.output.strip() == (
        "Error: train.spike_max_consecutive_skips must be at least 1, got 0"
    ), bad.output


# --- checkpoint: resuming from a spike checkpoint replays the spike's step ------------------------


def train_rows(path):
    clock = {"time_s", "tokens_per_s", "mfu", "peak_memory_mb", "data_wait_frac"}
    with open(path, newline="") as f:
        return {int(r["step"]): {k: v for k, v in r.items() if k not in clock} for r in csv.DictReader(f)}


def test_resuming_from_a_spike_checkpoint_replays_the_spike_step(tmp_path, poisoned, one_thread):
    original, resumed = tmp_path / "original", tmp_path / "resumed"
    first = CliRunner().invoke(
        app,
        [
            "train",
            "pretrain",
            *tiny_cli_args(original),
            "--max-steps",
            "40",
            "--spike-action",
            "checkpoint",
            "--dropout",
            "0.1",
            "--set",
            "train.spike_min_history=10",
            "--quiet",  # dropout: the RNG is replayed too
        ],
    )
    assert first.exit_code == 0, first.output
    spike = original / "checkpoints" / f"spike-{POISONED_STEP}.pt"
    saved = load_checkpoint(spike)
    assert saved["progress"]["tokens_seen"] == (POISONED_STEP - 1) * 16 * 8  # the data position before the batch
    again = CliRunner().invoke(app, ["train", "pretrain", "--resume", str(spike), "--out", str(resumed), "--quiet"])
    assert again.exit_code == 0, again.output
    before, after = train_rows(original / "train_log.csv"), train_rows(resumed / "train_log.csv")
    assert [s for s in after if s >= POISONED_STEP] == [30, 35, 40]
    for step in (30, 35, 40):  # the spike's step, trained on the same batch, and the steps after it
        assert after[step] == before[step], step
    assert [r["step"] for r in spike_rows(resumed)] == [str(POISONED_STEP)]


# --- resume: the spike action is part of what is trained --------------------------------------------


def test_resume_refuses_another_spike_action(tmp_path, one_thread):
    out = tmp_path / "run"
    first = CliRunner().invoke(
        app, ["train", "pretrain", *tiny_cli_args(out), "--max-steps", "10", "--checkpoint-every", "5", "--quiet"]
    )
    assert first.exit_code == 0, first.output
    before = (out / "train_log.csv").read_bytes()
    refused = CliRunner().invoke(
        app, ["train", "pretrain", "--resume", "auto", "--out", str(out), "--spike-action", "skip"]
    )
    assert refused.exit_code == 2, refused.output
    assert len(refused.output.strip().splitlines()) == 1 and "Traceback" not in refused.output
    assert "spike_action 'log' -> 'skip'" in refused.output
    assert (out / "train_log.csv").read_bytes() == before
    # log and checkpoint train the same steps: switching between them is a change in what is saved
    taken = CliRunner().invoke(
        app, ["train", "pretrain", "--resume", "auto", "--out", str(out), "--spike-action", "checkpoint", "--quiet"]
    )
    assert taken.exit_code == 0, taken.output
