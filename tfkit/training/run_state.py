"""What a checkpoint of a run holds, and putting it back: the state `fit` keeps across steps.

`RunState` is what the loop carries from step to step (position, counters, spike window,
rollbacks); `checkpoint_state` gathers it with the model, optimizer, data position and
every RNG into one checkpoint; `restore_state` puts a checkpoint back; `roll_back` reloads
the latest one after a loss spike but keeps the data position. `BeforeStep` records what a
step's batches change, so that a checkpoint taken mid-step replays the step.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

import tfkit
from tfkit.training.average import WeightAverage
from tfkit.training.checkpoint import latest_checkpoint, load_checkpoint, rng_state
from tfkit.training.counters import Progress, StepCounters
from tfkit.training.distributed import load_full_state
from tfkit.training.spikes import SpikeDetector
from tfkit.training.task import Task


@dataclass
class RunState:
    """What `fit` keeps across steps, all of it in every checkpoint."""

    progress: Progress
    counters: StepCounters
    detector: SpikeDetector
    rollbacks: int = 0
    average: WeightAverage | None = None  # `--ema-decay`


@dataclass
class BeforeStep:
    """What the batches of a step change, as it was before them: a checkpoint taken mid-step replays the step.

    The generators are kept as they are (a copy costs microseconds, every step) and put in a
    checkpoint's form (`rng`) only for a save.
    """

    tokens_seen: int
    task: dict[str, Any]
    generators: tuple[Any, ...]

    @classmethod
    def now(cls, progress: Progress, task: Task) -> BeforeStep:
        return cls(progress.tokens_seen, task.state_dict(), _generators())

    @property
    def rng(self) -> dict[str, Any]:
        """The generators as `rng_state` records them."""
        current = _generators()
        _set_generators(self.generators)
        try:
            return rng_state()
        finally:
            _set_generators(current)


def _generators() -> tuple[Any, ...]:
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    return random.getstate(), np.random.get_state(), torch.get_rng_state(), cuda


def _set_generators(generators: tuple[Any, ...]) -> None:
    python, numpy, cpu, cuda = generators
    random.setstate(python)
    np.random.set_state(numpy)
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state_all(cuda)


def checkpoint_state(
    weights: tuple[dict, dict, dict | None],
    run: RunState,
    task: Task,
    config: Any,
    elapsed: float,
    world: int = 1,
    before: BeforeStep | None = None,
) -> dict[str, Any]:
    """Everything a checkpoint holds; `weights` the model's and optimizer's state (`full_state`).

    With `before`, the data position, token count and RNGs are those of before the current step's batches.
    """
    progress = run.progress
    state = progress.state_dict()
    if before is not None:
        state["tokens_seen"] = before.tokens_seen
    averaged = {"ema": weights[2]} if weights[2] is not None else {}
    return {
        "model": weights[0],
        "optimizer": weights[1],
        "step": progress.step,
        "tokens_seen": state["tokens_seen"],
        "epoch": progress.epoch,
        "progress": state,
        "counters": run.counters.state_dict(),
        "spikes": run.detector.state_dict(),
        "rollbacks": run.rollbacks,
        "task": before.task if before is not None else task.state_dict(),
        "elapsed": elapsed,
        "config": config.to_dict(),
        "rng": before.rng if before is not None else rng_state(),
        "tfkit_version": tfkit.__version__,
        "world_size": world,
        **task.checkpoint_extra(),
        **averaged,
    }


def restore_state(
    state: dict[str, Any],
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    run: RunState,
    task: Task,
    *,
    data: bool = True,
) -> None:
    """Put a checkpoint's model, optimizer, counters and (with `data`) the task's data position back."""
    load_full_state(model, optimizer, state["model"], state["optimizer"], task.sharded)
    if run.average is not None and "ema" in state:
        run.average.load_state_dict(state["ema"])
    elif run.average is not None:  # a checkpoint written without --ema-decay: the average starts afresh
        run.average.reset()
    run.progress.load_state_dict(state["progress"])
    run.counters.load_state_dict(state["counters"])
    run.detector.load_state_dict(state["spikes"])
    run.rollbacks = state.get("rollbacks", 0)
    if data:
        task.load_state_dict(state["task"])
        run.progress.epoch = task.epoch()


def roll_back(
    run_dir: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, run: RunState, task: Task, limit: int
) -> str | None:
    """Reload the latest checkpoint but keep the data position (the spike's data is skipped); why not, if not."""
    step = run.progress.step + 1
    if run.rollbacks >= limit:
        return f"loss spike at step {step} after {limit} rollbacks (--set train.spike_max_rollbacks=N)"
    latest = latest_checkpoint(run_dir)
    if latest is None:
        return f"loss spike at step {step} and no checkpoint to roll back to (set --checkpoint-every)"
    rollbacks, epoch = run.rollbacks + 1, task.epoch()
    restore_state(load_checkpoint(latest), model, optimizer, run, task, data=False)
    run.rollbacks, run.progress.epoch = rollbacks, epoch
    return None
