"""Learning-rate schedule: linear warmup, then cosine, linear or no decay."""

from __future__ import annotations

import math

from tfkit.config import OptimConfig


def lr_at(step: int, config: OptimConfig, total_steps: int | None) -> float:
    """Learning rate for optimizer step `step` (0-based).

    Decay runs from the end of warmup to `total_steps`, ending at lr * min_lr_ratio.
    Without a known horizon (a run stopped by time only) the rate stays at its peak.
    """
    peak = config.lr
    if step < config.warmup_steps:
        return peak * (step + 1) / config.warmup_steps
    if config.schedule == "constant" or total_steps is None:
        return peak
    floor = peak * config.min_lr_ratio
    span = max(1, total_steps - config.warmup_steps)
    progress = min(1.0, (step - config.warmup_steps) / span)
    if config.schedule == "linear":
        return peak - (peak - floor) * progress
    return floor + 0.5 * (peak - floor) * (1.0 + math.cos(math.pi * progress))
