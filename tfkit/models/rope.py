"""Rotary frequencies: the inverse frequencies of `tfkit.models.gpt.Rotary`, scaled as `model.rope_scaling` asks.

The scalings are transformers' (`modeling_rope_utils`), so an imported Llama computes
the angles its checkpoint was trained with:

- "linear" (position interpolation): every inverse frequency divided by `factor`;
- "llama3" (Llama 3.1): with wavelength 2·pi / inv_freq and the context N =
  `original_max_position_embeddings`, wavelengths above N / `low_freq_factor` are divided
  by `factor`, those below N / `high_freq_factor` are kept, and those in between are
  interpolated: (1 - s) · inv_freq / factor + s · inv_freq with
  s = (N / wavelength - low_freq_factor) / (high_freq_factor - low_freq_factor).

transformers computes them in float32, tfkit in float64 before the tables are cast.
"""

from __future__ import annotations

import math
from typing import Any

import torch


def inverse_frequencies(head_dim: int, base: float, scaling: dict[str, Any] | None = None) -> torch.Tensor:
    """(head_dim / 2,) float64 inverse frequencies base^(-2i / head_dim), scaled by `scaling` (a rope_scaling)."""
    inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)  # (hs/2,)
    if scaling is None:
        return inv_freq
    factor = float(scaling["factor"])
    if scaling["rope_type"] == "linear":
        return inv_freq / factor
    if scaling["rope_type"] != "llama3":
        raise ValueError(f"unknown rope_type {scaling['rope_type']!r}")
    context = float(scaling["original_max_position_embeddings"])
    low, high = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
    wavelength = 2 * math.pi / inv_freq
    scaled = torch.where(wavelength > context / low, inv_freq / factor, inv_freq)
    smooth = (context / wavelength - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelength >= context / high) & (wavelength <= context / low)
    return torch.where(medium, smoothed, scaled)
