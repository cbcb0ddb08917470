"""The rolling-window spike test: thresholds against a plain computation, spikes kept out of the window."""

from __future__ import annotations

import math

import numpy as np
import torch

from tfkit.training.spikes import SpikeDetector


def test_thresholds_match_mean_plus_k_std_of_the_window():
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
            assert np.allclose(limits.numpy(), expected, rtol=1e-5), step
        seen.append((loss, norm))


def test_a_spike_is_flagged_and_kept_out_of_the_window():
    detector = SpikeDetector(window=16, sigma=6.0, min_history=8, device=torch.device("cpu"))
    for i in range(10):
        spike, _ = detector.check(torch.tensor(1.0 + 0.01 * (i % 3)), torch.tensor(0.5))
        assert not spike
    before = detector.thresholds().clone()
    spike, _ = detector.check(torch.tensor(1000.0), torch.tensor(0.5))
    assert spike
    spike, _ = detector.check(torch.tensor(1.0), torch.tensor(500.0))  # a grad-norm spike alone counts
    assert spike
    assert torch.equal(detector.thresholds(), before)  # neither entered the window
    spike, _ = detector.check(torch.tensor(float("nan")), torch.tensor(0.5))
    assert not spike and torch.equal(detector.thresholds(), before)  # non-finite: skipped elsewhere, not a spike
    state = detector.state_dict()
    other = SpikeDetector(window=16, sigma=6.0, min_history=8, device=torch.device("cpu"))
    other.load_state_dict(state)
    assert torch.equal(other.thresholds(), before)


# --- the actions, on a real run with one poisoned batch -----------------------------------------

import csv
import json

import pytest

from tfkit.training import loop
from tfkit.training.checkpoint import load_checkpoint

POISONED_STEP = 30  # 1-based: the 30th optimizer step sees a loss 1000 times too large


@pytest.fixture
def poisoned(monkeypatch):
    """Multiply the loss of step POISONED_STEP by 1000, and record the parameters before each step."""
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
    return tiny_config.with_updates({
        "train.max_steps": 50, "train.spike_action": action, "train.spike_min_history": 10,
        "train.checkpoint_every": 20, "train.eval_every": 50, **updates,
    })  # fmt: skip


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
    assert result.status == "completed" and result.summary["skipped_steps"] == 0  # a spike is not a bad step
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
    assert torch.equal(poisoned[20]["lm_head.weight"], load_checkpoint(result.run_dir / "checkpoints" / "2560.pt")[
        "model"]["lm_head.weight"])  # fmt: skip
    with open(result.run_dir / "train_log.csv", newline="") as f:
        steps = [int(r["step"]) for r in csv.DictReader(f)]
    assert steps == sorted(set(steps)) and steps[-1] == 50  # no duplicate rows after the rollback
    with open(result.run_dir / "step_losses.csv", newline="") as f:
        assert [int(r["step"]) for r in csv.DictReader(f)] == list(range(1, 51))  # steps 21..29 once, retrained
    config = json.loads((result.run_dir / "train_config.json").read_text())
    assert config["train"]["spike_action"] == "rollback"
    clean = loop.train(spike_config(tiny_config, "log", **{"log.out": str(tmp_path / "clean"),
                                                           "train.spike_sigma": 1e9}))  # fmt: skip
    assert abs(result.summary["val_loss"] - clean.summary["val_loss"]) < 0.02
