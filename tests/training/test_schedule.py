"""Learning-rate schedule: warmup, then cosine / linear / constant decay to the floor."""

from __future__ import annotations

import math

import pytest

from tfkit.config import OptimConfig
from tfkit.errors import ConfigError
from tfkit.training.schedule import lr_at


def test_warmup_is_linear_from_near_zero():
    cfg = OptimConfig(lr=1.0, warmup_steps=10)
    assert lr_at(0, cfg, 100) == pytest.approx(0.1)
    assert lr_at(4, cfg, 100) == pytest.approx(0.5)
    assert lr_at(9, cfg, 100) == pytest.approx(1.0)


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
def test_decay_reaches_the_floor_at_the_horizon(schedule):
    cfg = OptimConfig(lr=1.0, warmup_steps=10, min_lr_ratio=0.1, schedule=schedule)
    assert lr_at(10, cfg, 110) == pytest.approx(1.0)
    assert lr_at(110, cfg, 110) == pytest.approx(0.1)
    assert lr_at(500, cfg, 110) == pytest.approx(0.1)
    mid = 0.1 + 0.9 * (0.5 if schedule == "linear" else 0.5 * (1 + math.cos(math.pi / 2)))
    assert lr_at(60, cfg, 110) == pytest.approx(mid)
    values = [lr_at(s, cfg, 110) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))


def test_constant_and_unknown_horizon_stay_at_peak():
    assert lr_at(1000, OptimConfig(lr=0.5, warmup_steps=0, schedule="constant"), 100) == 0.5
    assert lr_at(1000, OptimConfig(lr=0.5, warmup_steps=0), None) == 0.5


def test_wsd_holds_the_peak_then_decays_linearly_over_the_last_fraction():
    cfg = OptimConfig(lr=1.0, warmup_steps=10, min_lr_ratio=0.1, schedule="wsd", decay_fraction=0.2)
    assert lr_at(4, cfg, 100) == pytest.approx(0.5)  # warmup as the other schedules
    assert [lr_at(s, cfg, 100) for s in range(10, 81)] == [1.0] * 71  # stable until the last 20 steps
    assert lr_at(90, cfg, 100) == pytest.approx(0.55)  # halfway down the linear decay
    assert lr_at(100, cfg, 100) == pytest.approx(0.1)
    assert lr_at(500, cfg, 100) == pytest.approx(0.1)
    values = [lr_at(s, cfg, 100) for s in range(80, 101)]
    assert all(a > b for a, b in zip(values, values[1:], strict=False))


def test_wsd_decay_starts_after_warmup_and_a_time_only_run_stays_at_peak():
    cfg = OptimConfig(lr=1.0, warmup_steps=50, min_lr_ratio=0.0, schedule="wsd", decay_fraction=0.8)
    assert lr_at(49, cfg, 100) == pytest.approx(1.0)  # the decay (last 80 steps) waits for warmup's end
    assert lr_at(75, cfg, 100) == pytest.approx(0.5)
    assert lr_at(10_000, OptimConfig(lr=0.5, warmup_steps=0, schedule="wsd"), None) == 0.5


@pytest.mark.parametrize("fraction", [0.0, -0.1, 1.5])
def test_decay_fraction_outside_0_1_is_refused(fraction):
    with pytest.raises(ConfigError, match="--decay-fraction"):
        OptimConfig(schedule="wsd", decay_fraction=fraction)
