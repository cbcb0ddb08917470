"""The training loop of `tfkit train icl`: in-context regression with curricula and looped models.

`train_icl(config)` draws fresh prompts every step (tfkit.data.icl), trains a
`VectorTransformer` (tfkit.models.looped) on the squared error of its predictions of
y_1..y_n, normalised by the task's E[f(x)^2] (so 1.0 is the zero predictor), and writes
the same run directory as `tfkit train pretrain`:

    train_config.json  train_log.csv  val_log.csv  checkpoints/<tokens>.pt  summary.json

"Tokens" are in-context examples: a step of B prompts with n points adds B * n to
`tokens_seen` (so checkpoints are named by examples trained on), and `seq_len` in the
train log is the current number of points. A looped model's loss is the mean over the
last `loop_window` loops of the current loop count; the loops before run without
gradients. The run lifecycle and the optimizer step (schedule, clipping, non-finite
steps, stop criteria, cadences, trackers, Ctrl-C, S3) are `tfkit.training.session`.

Evaluation uses one fixed validation set at the final dims and points and logs, per
in-context position i (the index of the predicted y): `val_loss_<i>` (the model, after
--n-loops loops) and the baselines `least_squares_loss_<i>`, `knn_loss_<i>`,
`averaging_loss_<i>`, `zero_loss_<i>`, all normalised the same way; a looped model also
gets `val_loss_loop_<k>`, the mean over positions after k loops, for k = 1..eval_loops.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

import tfkit
from tfkit.data.icl import (
    BASELINES,
    Stage,
    baseline_errors,
    interleave,
    normaliser,
    predictions_at_x,
    sample_prompts,
    stage_at,
)
from tfkit.models.looped import VectorTransformer
from tfkit.training.checkpoint import checkpoint_path, rng_state, save_checkpoint
from tfkit.training.icl_config import IclRunConfig
from tfkit.training.loop import _autocast, resolve_device
from tfkit.training.optim import build_optimizer
from tfkit.training.session import (
    Progress,
    RunResult,
    RunSession,
    StepHooks,
    TrainCallback,
    compile_enabled,
    prepare_device,
)

TRAIN_COLUMNS = (
    "step", "tokens_seen", "time_s", "lr", "batch_size", "seq_len", "train_loss", "grad_norm", "skipped_steps",
    "curriculum_dims", "curriculum_points", "curriculum_loops",
)  # fmt: skip
VAL_COLUMNS = ("step", "tokens_seen", "time_s", "curriculum_dims", "curriculum_points", "curriculum_loops", "val_loss")


def icl_log_columns(n_points: int, eval_loops: int) -> tuple[list[str], list[str]]:
    """The columns of `train_log.csv` and `val_log.csv` (eval_loops 1: no per-loop columns)."""
    val = list(VAL_COLUMNS)
    for prefix in ("val_loss", *(f"{name}_loss" for name in BASELINES)):
        val += [f"{prefix}_{i}" for i in range(1, n_points + 1)]
    if eval_loops > 1:
        val += [f"val_loss_loop_{k}" for k in range(1, eval_loops + 1)]
    return list(TRAIN_COLUMNS), val


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
        c = config.curriculum
        if c.points_start is None:
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
        xs, ys = sample_prompts(task, task.val_prompts, task.n_points, task.n_dims, generator)
        norm = normaliser(task, task.n_dims)
        errors = baseline_errors(xs, ys, task)
        baselines = {name: (err / norm).tolist() for name, err in errors.items()}
        return cls(xs.to(device), ys.to(device), norm, baselines)


@torch.no_grad()
def evaluate_icl(
    model: VectorTransformer, val: ValSet, config: IclRunConfig, device: torch.device
) -> dict[str, Any]:
    """Validation metrics: per-position normalised errors of the model and baselines, per-loop loss."""
    model.eval()
    loops, scored = config.loop.loops, config.loop.scored_loops
    n = val.xs.shape[1]
    sq = torch.zeros(scored, n, dtype=torch.float64, device=device)  # summed squared error per (loop, position)
    for start in range(0, len(val.xs), config.task.batch_size):
        xs, ys = val.xs[start : start + config.task.batch_size], val.ys[start : start + config.task.batch_size]
        with _autocast(device, config.train.precision):
            outs = model(interleave(xs, ys), scored, scored)  # [(B, 2n)] after loops 1..scored
        for k, out in enumerate(outs):
            sq[k] += (predictions_at_x(out.float()) - ys).square().sum(0).double()
    model.train()
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


@dataclass(kw_only=True)
class _Progress(Progress):
    """Progress through the curriculum; prompts are drawn fresh every step, so there are no epochs."""

    stage: Stage  # the curriculum stage of the latest step (the first one before any step)

    def stage_fields(self) -> dict[str, Any]:
        return {
            "curriculum_dims": self.stage.dims,
            "curriculum_points": self.stage.points,
            "curriculum_loops": self.stage.loops,
        }


def train_icl(
    config: IclRunConfig,
    *,
    callback: TrainCallback | None = None,
    overwrite: bool = False,
) -> RunResult:
    """Train one in-context regression model as `config` says and write its run directory.

    Returns a `RunResult` (status completed, interrupted or failed) like
    `tfkit.training.loop.train`; raises `TfkitError` for bad input before anything is written.
    """
    device = resolve_device(config.train.device)
    config = config.resolved()
    session = RunSession.open(config, callback=callback, overwrite=overwrite)
    run_dir = session.run_dir

    prepare_device(config.train.seed, device)
    model = build_model(config).to(device)
    use_compile = compile_enabled(config.train, device)
    if use_compile:
        model.blocks.compile_step()
    optimizer = build_optimizer(model, config.optim, device)
    val = ValSet.make(config, device)

    t, task = config.train, config.task
    accum = config.optim.grad_accum_steps
    session.start(
        model,
        device,
        compiled=use_compile,
        horizon=total_steps(config),
        meta={"data_source": f"{task.task} (d={task.n_dims}, {task.n_points} points)"},
    )

    progress = _Progress(stage=stage_at(0, config))
    generator = torch.Generator(device).manual_seed(config.train.seed)

    def step() -> tuple[torch.Tensor, None]:
        stage = progress.stage = stage_at(progress.step, config)
        window = min(config.loop.window, stage.loops)
        norm = normaliser(task, stage.dims)
        step_loss = torch.zeros((), dtype=torch.float32, device=device)
        for _ in range(accum):
            xs, ys = sample_prompts(task, task.batch_size, stage.points, stage.dims, generator)
            with _autocast(device, t.precision):
                outs = model(interleave(xs, ys), stage.loops, window)  # [(B, 2n)] for the window's loops
            loss = window_loss(outs, ys, norm)
            (loss / accum).backward()
            step_loss += loss.detach() / accum
        return step_loss, None

    def advance() -> None:
        progress.tokens_seen += task.batch_size * progress.stage.points * accum

    def save() -> None:
        state = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "step": progress.step,
            "tokens_seen": progress.tokens_seen,
            "data_generator": generator.get_state(),
            "config": config.to_dict(),
            "rng": rng_state(),
            "tfkit_version": tfkit.__version__,
        }
        save_checkpoint(checkpoint_path(run_dir, progress.tokens_seen), state)

    hooks = StepHooks(
        step=step,
        advance=advance,
        shape=lambda: (task.batch_size * accum, progress.stage.points),
        evaluate=lambda: evaluate_icl(model, val, config, device),
        save=save,
    )
    return session.run(progress, optimizer, hooks)


def window_loss(outs: list[torch.Tensor], ys: torch.Tensor, norm: float) -> torch.Tensor:
    """Mean over the window's loops of the normalised squared error at the x positions."""
    losses = [(predictions_at_x(out) - ys).square().mean() for out in outs]
    return torch.stack(losses).mean() / norm
