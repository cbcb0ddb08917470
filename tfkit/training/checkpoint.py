"""Checkpoints: `checkpoints/<tokens_trained>.pt`, loadable with `torch.load(weights_only=True)`.

A checkpoint holds what resuming or fine-tuning needs: model and optimizer state, the
step / token / epoch counters and data cursor, every RNG state, and the resolved config.
Only tensors and plain Python values are stored, so nothing runs code on load.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tfkit.errors import DataError
from tfkit.io import write_atomic


def checkpoint_path(run_dir: str | Path, tokens_trained: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"{tokens_trained}.pt"


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write atomically: a crash mid-save leaves the previous checkpoints intact."""
    write_atomic(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"checkpoint not found: {path}")
    return torch.load(path, map_location=map_location, weights_only=True)


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The checkpoint with the most tokens trained, or None."""
    folder = Path(run_dir) / "checkpoints"
    found = [p for p in folder.glob("*.pt") if p.stem.isdigit()]
    return max(found, key=lambda p: int(p.stem)) if found else None


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {
        "python": json.dumps(random.getstate()),
        "numpy": json.dumps([np_state[0], np_state[1].tolist(), *np_state[2:]]),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    py = json.loads(state["python"])
    random.setstate((py[0], tuple(py[1]), py[2]))
    name, keys, *rest = json.loads(state["numpy"])
    np.random.set_state((name, np.array(keys, dtype=np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
