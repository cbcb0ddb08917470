"""Learning-rate schedule: linear warmup, then cosine, linear, warmup-stable-decay or no decay."""

from __future__ import annotations

import math

from tfkit.config import OptimConfig


def lr_at(step: int, config: OptimConfig, total_steps: int | None) -> float:
    """Learning rate for optimizer step `step` (0-based).

    Decay runs from the end of warmup to `total_steps`, ending at lr * min_lr_ratio; `wsd`
    (warmup-stable-decay, or trapezoidal) holds the peak until the last `decay_fraction` of
    `total_steps` and decays linearly over them (never starting before warmup ends).
    Without a known horizon (a run stopped by time only) the rate stays at its peak.
    """
    peak = config.lr
    if step < config.warmup_steps:
        return peak * (step + 1) / config.warmup_steps
    if config.schedule == "constant" or total_steps is None:
        return peak
    floor = peak * config.min_lr_ratio
    start = config.warmup_steps
    if config.schedule == "wsd":
        start = max(start, total_steps - round(config.decay_fraction * total_steps))
    span = max(1, total_steps - start)
    progress = min(1.0, max(0.0, (step - start) / span))  # wsd: 0 through its stable phase
    if config.schedule in ("linear", "wsd"):
        return peak - (peak - floor) * progress
    return floor + 0.5 * (peak - floor) * (1.0 + math.cos(math.pi * progress))
