"""Throughput columns of `train_log.csv`: tokens/s, MFU, peak memory and the time spent waiting for data.

MFU (model FLOPs utilisation) is the model's training FLOPs per token (`flops_per_token`
of the real model: 6·N plus attention, as PaLM and nanoGPT count them) times the tokens
per second, divided by the device's peak. Peaks are bf16 dense tensor-core figures from
the vendors' data sheets for the GPUs below (`--set train.peak_flops=...` overrides);
where no peak is known (a CPU, an unlisted GPU) the column is left empty.
"""

from __future__ import annotations

import resource
import sys
import time
from typing import Any

import torch

# bf16 dense peak FLOP/s by a substring of torch.cuda.get_device_name (first match wins)
PEAK_FLOPS: tuple[tuple[str, float], ...] = (
    ("GB200", 2.5e15),
    ("B200", 2.25e15),
    ("H200", 989.4e12),
    ("H100 PCIe", 756e12),
    ("H100", 989.4e12),  # SXM and NVL
    ("H800", 989.4e12),
    ("GH200", 989.4e12),
    ("A100", 312e12),
    ("A800", 312e12),
    ("L40S", 362e12),
    ("L40", 181e12),
    ("L4", 121e12),
    ("A10G", 70e12),
    ("A10", 125e12),
    ("RTX 4090", 165.2e12),
    ("RTX 3090", 71e12),
)


def peak_flops(device: torch.device, override: float | None = None) -> float | None:
    """The device's bf16 dense peak in FLOP/s: `override`, the table's entry for a CUDA device, or None."""
    if override is not None:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((flops for key, flops in PEAK_FLOPS if key in name), None)


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory so far: CUDA's max allocated on a GPU, the process's peak resident set elsewhere."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


class Throughput:
    """Tokens, training time and data-wait time between two train rows.

    The trainer calls `data_wait` around fetching batches; `row` gives the columns for
    the steps since the previous row and starts the next interval. Evaluation time is
    left out (`pause`/`resume` around it).
    """

    def __init__(self, device: torch.device, flops_per_token: float | None, peak: float | None) -> None:
        self.device = device
        self.flops_per_token = flops_per_token
        self.peak = peak
        self.start = time.perf_counter()
        self.tokens_at_start = 0
        self.waited = 0.0
        self.paused = 0.0

    def data_wait(self, seconds: float) -> None:
        self.waited += seconds

    def exclude(self, seconds: float) -> None:
        """Leave `seconds` (an evaluation, a checkpoint) out of the current interval."""
        self.paused += seconds

    def row(self, tokens_seen: int) -> dict[str, Any]:
        now = time.perf_counter()
        seconds = max(now - self.start - self.paused, 1e-9)
        rate = (tokens_seen - self.tokens_at_start) / seconds
        mfu = rate * self.flops_per_token / self.peak if self.peak and self.flops_per_token else None
        row = {
            "tokens_per_s": rate,
            "mfu": mfu,
            "peak_memory_mb": peak_memory_mb(self.device),
            "data_wait_frac": min(self.waited / seconds, 1.0),
        }
        self.start, self.tokens_at_start, self.waited, self.paused = now, tokens_seen, 0.0, 0.0
        return row
