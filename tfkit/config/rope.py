"""`model.rope_scaling`: the rotary frequency scalings a model config may ask for (transformers'
rope types "linear" and "llama3") and the check of their parameters. The frequencies
themselves are computed by `tfkit.models.rope`.
"""

from __future__ import annotations

import math

from tfkit.config.fields import shown
from tfkit.errors import ConfigError

# the parameters of each `model.rope_scaling` rope_type (transformers' names), all positive numbers
ROPE_SCALING = {
    "linear": ("factor",),
    "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"),
}


def checked_rope_scaling(scaling: dict[str, float | str], positions: str) -> dict[str, float | str]:
    """`model.rope_scaling` as the model reads it: its rope_type, then its parameters as floats, or a refusal."""
    label = "model.rope_scaling"
    if positions != "rotary":
        raise ConfigError(f"{label} scales the rotary frequencies: it takes --positions rotary")
    if not isinstance(scaling, dict):
        raise ConfigError(f"{label} must be a mapping (rope_type=linear,factor=2), got {shown(scaling)}")
    kind = scaling.get("rope_type")
    if not isinstance(kind, str) or kind not in ROPE_SCALING:
        raise ConfigError(f"{label} rope_type must be one of {', '.join(ROPE_SCALING)}, got {shown(kind)}")
    wanted = ROPE_SCALING[kind]
    if set(scaling) != {"rope_type", *wanted}:
        raise ConfigError(f"{label} rope_type={kind} takes {', '.join(wanted)}, got {', '.join(sorted(scaling))}")
    values: dict[str, float | str] = {"rope_type": kind}
    for name in wanted:
        value = scaling[name]
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < math.inf:
            raise ConfigError(f"{label} {name} must be a positive number, got {shown(value)}")
        values[name] = float(value)
    if kind == "llama3":
        if not values["high_freq_factor"] > values["low_freq_factor"]:  # type: ignore[operator]
            raise ConfigError(f"{label} high_freq_factor must be above low_freq_factor")
        if not float(values["original_max_position_embeddings"]).is_integer():
            raise ConfigError(f"{label} original_max_position_embeddings must be a whole number of positions")
    return values
