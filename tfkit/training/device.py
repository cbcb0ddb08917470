"""The training device: resolving `--device`, seeding every RNG and the device's flags, bf16 autocast, compile.

Every trainer (pretraining, ICL, SFT, DPO) takes these from here: `resolve_device` for
`--device`, `prepare_device` before the model is built, `autocast` around each forward,
`compile_enabled` for `--compile`.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator

import numpy as np
import torch

from tfkit.config import TrainConfig
from tfkit.errors import ConfigError


def resolve_device(name: str) -> torch.device:
    """The device `--device` names (`auto`: CUDA, else MPS, else the CPU); one not here is refused."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {name}: CUDA is not available on this machine")
        index = int(name[5:]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise ConfigError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) here")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("--device mps: MPS is not available on this machine")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def prepare_device(seed: int, device: torch.device) -> None:
    """Seed every RNG and, on CUDA, let matmuls use TF32."""
    seed_everything(seed)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def compile_enabled(t: TrainConfig, device: torch.device) -> bool:
    """Whether to torch.compile: `--compile on`, or `auto` on CUDA."""
    return t.compile == "on" or (t.compile == "auto" and device.type == "cuda")


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast for `--precision bf16` (or `auto` on CUDA); otherwise nothing (float32)."""
    use_bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    if use_bf16:
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@contextlib.contextmanager
def evaluating(model: torch.nn.Module) -> Iterator[None]:
    """The model in eval mode (no dropout) and without gradients; back in train mode after, even on an error."""
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train()
