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
gradients. The optimizer, schedule, stop criteria, checkpoints, trackers and Ctrl-C
handling are those of `tfkit.training.loop`.

Evaluation uses one fixed validation set at the final dims and points and logs, per
in-context position i (the index of the predicted y): `val_loss_<i>` (the model, after
--n-loops loops) and the baselines `least_squares_loss_<i>`, `knn_loss_<i>`,
`averaging_loss_<i>`, `zero_loss_<i>`, all normalised the same way; a looped model also
gets `val_loss_loop_<k>`, the mean over positions after k loops, for k = 1..eval_loops.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
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
from tfkit.io import write_json_atomic
from tfkit.models.looped import VectorTransformer
from tfkit.tracking import Tracker
from tfkit.training.checkpoint import checkpoint_path, rng_state, save_checkpoint
from tfkit.training.icl_config import IclRunConfig
from tfkit.training.loop import (
    RunResult,
    TrainCallback,
    _autocast,
    _Flag,
    _interrupt_flag,
    open_trackers,
    prepare_run_dir,
    resolve_device,
    run_meta,
    seed_everything,
    stop_reached,
)
from tfkit.training.optim import build_optimizer
from tfkit.training.schedule import lr_at

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


@dataclass
class _Progress:
    step: int = 0
    tokens_seen: int = 0
    last_eval_step: int = -1
    last_checkpoint_step: int = -1
    eval_time: float = 0.0
    stage: Stage | None = None
    last_val: dict[str, Any] = field(default_factory=dict)


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
    from tfkit.storage.uploader import RunPusher

    callback = callback or TrainCallback()
    device = resolve_device(config.train.device)
    config = config.resolved()
    run_dir = Path(config.log.out)  # type: ignore[arg-type]
    pusher = RunPusher.open(run_dir, config.log.s3_uri, overwrite=overwrite) if config.log.s3_uri else None
    prepare_run_dir(run_dir, overwrite)

    seed_everything(config.train.seed)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    model = build_model(config).to(device)
    use_compile = config.train.compile == "on" or (config.train.compile == "auto" and device.type == "cuda")
    if use_compile:
        model.blocks.compile_step()
    optimizer = build_optimizer(model, config.optim, device)
    val = ValSet.make(config, device)

    horizon = total_steps(config)
    num_params, num_params_ne = model.num_params(), model.num_params(non_embedding=True)
    task = config.task
    meta = {
        **run_meta(device, use_compile),
        "data_source": f"{task.task} (d={task.n_dims}, {task.n_points} points)",
        "num_params": num_params,
        "num_params_non_embedding": num_params_ne,
        "total_steps": horizon,
        "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    write_json_atomic(run_dir / "train_config.json", {**config.to_dict(), "meta": meta})
    tracker = open_trackers(config, run_dir, meta)
    callback.on_start(
        {"run_dir": str(run_dir), "total_steps": horizon, "config": config.to_flat_dict(), **meta, "device": str(device)}
    )

    progress = _Progress()
    flag = _Flag()
    t0 = time.perf_counter()
    status, message = "completed", None
    bad_total = torch.zeros((), dtype=torch.long, device=device)

    def summary() -> dict[str, Any]:
        wall = time.perf_counter() - t0
        stage = progress.stage or stage_at(0, config)
        return {
            "status": status,
            "message": message,
            "step": progress.step,
            "tokens_seen": progress.tokens_seen,
            "wall_time_s": wall,
            "tokens_per_s": progress.tokens_seen / max(wall - progress.eval_time, 1e-9),
            "num_params": num_params,
            "num_params_non_embedding": num_params_ne,
            "skipped_steps": int(bad_total.item()),
            "curriculum_dims": stage.dims,
            "curriculum_points": stage.points,
            "curriculum_loops": stage.loops,
            **progress.last_val,
            "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }

    def evaluate_and_log() -> None:
        start = time.perf_counter()
        metrics = evaluate_icl(model, val, config, device)
        progress.eval_time += time.perf_counter() - start
        stage = progress.stage or stage_at(0, config)
        row = {
            "step": progress.step,
            "tokens_seen": progress.tokens_seen,
            "time_s": time.perf_counter() - t0,
            "curriculum_dims": stage.dims,
            "curriculum_points": stage.points,
            "curriculum_loops": stage.loops,
            **metrics,
        }
        progress.last_eval_step = progress.step
        progress.last_val = {k: v for k, v in metrics.items() if not k[-1].isdigit()}
        tracker.log_val(row)
        callback.on_eval(row)

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
        progress.last_checkpoint_step = progress.step

    generator = torch.Generator(device).manual_seed(config.train.seed)
    try:
        with _interrupt_flag(flag):
            status, message = _run_steps(
                config, model, optimizer, generator, device, horizon, tracker, callback,
                progress, flag, t0, bad_total, evaluate_and_log, save, pusher,
            )  # fmt: skip
            if status == "completed" and progress.last_eval_step != progress.step:
                evaluate_and_log()
            if progress.last_checkpoint_step != progress.step:
                save()
    except BaseException as exc:
        status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
        message = message or (f"{type(exc).__name__}: {exc}" if status == "failed" else "interrupted")
        with contextlib.suppress(Exception):
            write_json_atomic(run_dir / "summary.json", summary())
        with contextlib.suppress(Exception):
            tracker.close()
        if pusher is not None:
            pusher.abandon()
        raise
    final = summary()
    write_json_atomic(run_dir / "summary.json", final)
    tracker.log_summary(final)
    tracker.close()
    callback.on_end(final)
    pushed = pusher.finish() if pusher is not None else None
    return RunResult(run_dir=run_dir, status=status, summary=final, message=message, pushed=pushed)


def window_loss(outs: list[torch.Tensor], ys: torch.Tensor, norm: float) -> torch.Tensor:
    """Mean over the window's loops of the normalised squared error at the x positions."""
    losses = [(predictions_at_x(out) - ys).square().mean() for out in outs]
    return torch.stack(losses).mean() / norm


def _run_steps(
    config: IclRunConfig,
    model: VectorTransformer,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    device: torch.device,
    horizon: int | None,
    tracker: Tracker,
    callback: TrainCallback,
    progress: _Progress,
    flag: _Flag,
    t0: float,
    bad_total: torch.Tensor,
    evaluate_and_log: Any,
    save: Any,
    pusher: Any,
) -> tuple[str, str | None]:
    """The step loop. Returns (status, message) once a stop criterion, Ctrl-C or failure ends it."""
    t, task = config.train, config.task
    accum = config.optim.grad_accum_steps
    params = [p for p in model.parameters() if p.requires_grad]
    loss_sum = torch.zeros((), dtype=torch.float32, device=device)
    good_steps = torch.zeros((), dtype=torch.long, device=device)
    consecutive_bad = torch.zeros((), dtype=torch.long, device=device)
    worst_run = torch.zeros((), dtype=torch.long, device=device)
    norm_last = torch.zeros((), dtype=torch.float32, device=device)

    last_logged = 0

    def log_row() -> tuple[str, str] | None:
        """A train row for the steps since the last one; ("failed", why) after too many bad steps."""
        nonlocal last_logged
        n_good = int(good_steps.item())
        row = {
            "step": progress.step,
            "tokens_seen": progress.tokens_seen,
            "time_s": time.perf_counter() - t0,
            "lr": lr,
            "batch_size": task.batch_size * accum,
            "seq_len": stage.points,
            "train_loss": float(loss_sum.item()) / n_good if n_good else math.nan,
            "grad_norm": float(norm_last.item()),
            "skipped_steps": int(bad_total.item()),
            "curriculum_dims": stage.dims,
            "curriculum_points": stage.points,
            "curriculum_loops": stage.loops,
        }
        tracker.log_train(row)
        last_logged = progress.step
        callback.on_log(row)
        loss_sum.zero_()
        good_steps.zero_()
        if int(worst_run.item()) >= t.max_bad_steps:
            return "failed", (
                f"{int(worst_run.item())} non-finite steps in a row (loss or gradient norm); "
                "lower --lr or raise --warmup-steps"
            )
        return None

    while True:
        stopping = "interrupted" if flag.requested else None
        if stopping is None and stop_reached(t, progress.step, progress.tokens_seen, 0.0, time.perf_counter() - t0):
            stopping = "completed"
        if stopping is not None:
            failed = log_row() if progress.step > last_logged else None  # the log ends where the run does
            if failed is not None:
                return failed
            return stopping, ("interrupted by Ctrl-C" if stopping == "interrupted" else None)

        stage = stage_at(progress.step, config)
        progress.stage = stage
        window = min(config.loop.window, stage.loops)
        norm = normaliser(task, stage.dims)
        lr = lr_at(progress.step, config.optim, horizon)
        for group in optimizer.param_groups:
            group["lr"] = lr
        step_loss = torch.zeros((), dtype=torch.float32, device=device)
        for _ in range(accum):
            xs, ys = sample_prompts(task, task.batch_size, stage.points, stage.dims, generator)
            with _autocast(device, t.precision):
                outs = model(interleave(xs, ys), stage.loops, window)  # [(B, 2n)] for the window's loops
            loss = window_loss(outs, ys, norm)
            (loss / accum).backward()
            step_loss += loss.detach() / accum

        if config.optim.grad_clip > 0:
            grad_norm = torch.nn.utils.clip_grad_norm_(params, config.optim.grad_clip, foreach=True)
        else:
            grad_norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
        finite = torch.isfinite(step_loss) & torch.isfinite(grad_norm)
        optimizer.found_inf = (~finite).float()  # type: ignore[attr-defined]  # fused AdamW skips on device
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        bad = (~finite).long()
        bad_total += bad
        consecutive_bad.mul_(bad).add_(bad)
        torch.maximum(worst_run, consecutive_bad, out=worst_run)
        loss_sum += torch.where(finite, step_loss, torch.zeros_like(step_loss))
        good_steps += finite.long()
        norm_last = grad_norm.detach().float()

        progress.step += 1
        progress.tokens_seen += task.batch_size * stage.points * accum

        if progress.step % config.log.log_every == 0:
            failed = log_row()
            if failed is not None:
                return failed
        if progress.step % t.eval_every == 0:
            evaluate_and_log()
        if t.checkpoint_every is not None and progress.step % t.checkpoint_every == 0:
            save()
            if pusher is not None and config.log.s3_every_checkpoint:
                pusher.push_soon()
