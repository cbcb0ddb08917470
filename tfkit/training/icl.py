"""`tfkit train icl`: in-context regression with curricula and looped models.

`train_icl(config)` hands an `IclTask` to the one training loop (`tfkit.training.fit`).
The task draws fresh prompts every step (tfkit.data.icl), trains a
`VectorTransformer` (tfkit.models.looped) on the squared error of its predictions of
y_1..y_n, normalised by the task's E[f(x)^2] (so 1.0 is the zero predictor), and writes
the same run directory as `tfkit train pretrain`:

    train_config.json  train_log.csv  val_log.csv  checkpoints/<tokens>.pt  summary.json

Progress is counted in in-context points (x, f(x)): a step of B prompts with n points adds
B * n to `points_seen`, the count column of its rows (checkpoints are named by that count,
and `--max-tokens` stops after that many points), and `seq_len` in the train log is the
current number of points. A looped model's loss is the mean over the
last `loop_window` loops of the current loop count; the loops before run without
gradients. The prompt generator's state is the task's position: a resumed run draws the
prompts an uninterrupted one would.

Evaluation uses one fixed validation set at the final dims and points and logs, per
in-context position i (the index of the predicted y): `val_loss_<i>` (the model, after
--n-loops loops) and the baselines `least_squares_loss_<i>`, `knn_loss_<i>`,
`averaging_loss_<i>`, `zero_loss_<i>`, all normalised the same way; a looped model also
gets `val_loss_loop_<k>`, the mean over positions after k loops, for k = 1..eval_loops.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Unpack

import torch

from tfkit.config.icl import IclRunConfig
from tfkit.data.icl import (
    BASELINES,
    baseline_errors,
    interleave,
    normaliser,
    predictions_at_x,
    sample_prompts,
    stage_at,
)
from tfkit.models.looped import VectorTransformer
from tfkit.training.columns import icl_columns
from tfkit.training.device import autocast, evaluating, resolve_device
from tfkit.training.fit import fit
from tfkit.training.session import RunArgs, RunResult
from tfkit.training.task import Task


def build_model(config: IclRunConfig) -> VectorTransformer:
    """The model of a resolved config (max_seq_len set)."""
    return VectorTransformer(config.model, config.task.n_dims)


def total_steps(config: IclRunConfig) -> int | None:
    """The step horizon of the step and example limits (None: time only).

    Examples per step follow the points curriculum, so a --max-tokens limit is turned into
    steps by walking the curriculum.
    """
    t = config.train
    limits = [t.max_steps] if t.max_steps is not None else []
    if t.max_tokens is not None:
        per_prompt = config.task.batch_size * config.optim.grad_accum_steps
        if config.points_start == config.task.n_points:
            limits.append(math.ceil(t.max_tokens / (per_prompt * config.task.n_points)))
        else:
            step, seen = 0, 0
            while seen < t.max_tokens and (t.max_steps is None or step < t.max_steps):
                seen += per_prompt * stage_at(step, config).points
                step += 1
            limits.append(step)
    return min(limits) if limits else None


@dataclass
class ValSet:
    """The fixed validation prompts and their baselines (computed once)."""

    xs: torch.Tensor  # (N, n, D)
    ys: torch.Tensor  # (N, n)
    norm: float
    baselines: dict[str, list[float]]  # name -> normalised squared error per position

    @classmethod
    def make(cls, config: IclRunConfig, device: torch.device) -> ValSet:
        task = config.task
        generator = torch.Generator().manual_seed(task.val_seed)  # on CPU: the same set on every device
        xs, ys = sample_prompts(task, task.val_examples, task.n_points, task.n_dims, generator)
        norm = normaliser(task, task.n_dims)
        errors = baseline_errors(xs, ys, task)
        baselines = {name: (err / norm).tolist() for name, err in errors.items()}
        return cls(xs.to(device), ys.to(device), norm, baselines)


def evaluate_icl(model: VectorTransformer, val: ValSet, config: IclRunConfig, device: torch.device) -> dict[str, Any]:
    """Validation metrics: per-position normalised errors of the model and baselines, per-loop loss."""
    with evaluating(model):
        loops, scored = config.loop.loops, config.loop.scored_loops
        n = val.xs.shape[1]
        sq = torch.zeros(scored, n, dtype=torch.float64, device=device)  # summed squared error per (loop, position)
        for start in range(0, len(val.xs), config.task.batch_size):
            xs, ys = val.xs[start : start + config.task.batch_size], val.ys[start : start + config.task.batch_size]
            with autocast(device, config.train.precision):
                outs = model(interleave(xs, ys), scored, scored)  # [(B, 2n)] after loops 1..scored
            for k, out in enumerate(outs):
                sq[k] += (predictions_at_x(out.float()) - ys).square().sum(0).double()
    per_loop = (sq / (len(val.xs) * val.norm)).cpu()  # (scored, n)
    at_end = per_loop[loops - 1].tolist()
    row: dict[str, Any] = {"val_loss": float(per_loop[loops - 1].mean())}
    for i in range(n):
        row[f"val_loss_{i + 1}"] = at_end[i]
    for name in BASELINES:
        for i in range(n):
            row[f"{name}_loss_{i + 1}"] = val.baselines[name][i]
    if scored > 1:
        for k in range(scored):
            row[f"val_loss_loop_{k + 1}"] = float(per_loop[k].mean())
    return row


class IclTask(Task):
    """In-context regression: fresh prompts every step, at the curriculum's current stage."""

    count_column = "points_seen"

    def __init__(self, config: IclRunConfig, device: torch.device) -> None:
        self.config, self.device = config, device
        task = config.task
        self.meta = {"data_source": f"{task.task} (d={task.n_dims}, {task.n_points} points)"}
        self.begin_step(0)  # the stage of the latest step (the first one before any step)
        self.generator = torch.Generator(device).manual_seed(config.train.seed)

    def build(self, device: torch.device, compiled: bool) -> torch.nn.Module:
        self.model = build_model(self.config).to(device)
        if compiled:
            self.model.blocks.compile_step()
        self.val = ValSet.make(self.config, device)
        return self.model

    def horizon(self) -> int | None:
        return total_steps(self.config)

    def begin_step(self, step: int) -> None:
        self.stage = stage_at(step, self.config)
        self.window = min(self.config.loop.window, self.stage.loops)
        self.norm = normaliser(self.config.task, self.stage.dims)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        task = self.config.task
        return sample_prompts(task, task.batch_size, self.stage.points, self.stage.dims, self.generator)

    def loss(self, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, None]:
        xs, ys = batch
        with autocast(self.device, self.config.train.precision):
            outs = self.model(interleave(xs, ys), self.stage.loops, self.window)  # [(B, 2n)] for the window's loops
        return window_loss(outs, ys, self.norm), None

    def batch_tokens(self, batch: tuple[torch.Tensor, torch.Tensor]) -> int:
        return self.config.task.batch_size * self.stage.points

    def shape(self) -> tuple[int, int]:
        return self.config.task.batch_size * self.config.optim.grad_accum_steps, self.stage.points

    def columns(self) -> tuple[list[str], list[str]]:
        return icl_columns(self.config.task.n_points, self.config.loop.scored_loops)

    def evaluate(self) -> dict[str, Any]:
        return evaluate_icl(self.model, self.val, self.config, self.device)

    def stage_fields(self) -> dict[str, Any]:
        return {
            "curriculum_dims": self.stage.dims,
            "curriculum_points": self.stage.points,
            "curriculum_loops": self.stage.loops,
        }

    def state_dict(self) -> dict[str, Any]:
        return {"data_generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["data_generator"])


def train_icl(
    config: IclRunConfig,
    **run: Unpack[RunArgs],
) -> RunResult:
    """Train one in-context regression model as `config` says and write its run directory.

    Returns a `RunResult` (status completed, interrupted or failed) like
    `tfkit.training.loop.train`; raises `TfkitError` for bad input before anything is written.
    """
    device = resolve_device(config.train.device)
    config = config.resolved()
    return fit(IclTask(config, device), config, device, **run)


def window_loss(outs: list[torch.Tensor], ys: torch.Tensor, norm: float) -> torch.Tensor:
    """Mean over the window's loops of the normalised squared error at the x positions."""
    losses = [(predictions_at_x(out) - ys).square().mean() for out in outs]
    return torch.stack(losses).mean() / norm
