"""In-context regression data: Garg et al.'s function classes, curricula and baselines.

A prompt is (x_1, f(x_1), ..., x_n, f(x_n)) with x_i ~ N(0, I_d) and one random f per
prompt. `sample_prompts` draws a batch as xs (B, n, D) and ys (B, n), where D is the
model's input dimension and only the first d <= D coordinates are non-zero (the dims
curriculum). `interleave` turns them into the model's input: 2n vectors of size D, x_i
then (y_i, 0, ..., 0), and the prediction of y_i is read at x_i's position.

Tasks (the scale of each makes E[f(x)^2] the task's `normaliser`, so the zero predictor
has normalised squared error 1):

- linear_regression: f(x) = w.x, w ~ N(0, I_d); normaliser d.
- sparse_linear_regression: as above with all but `sparsity` random weights zeroed;
  normaliser min(sparsity, d).
- noisy_linear_regression: w.x plus N(0, noise_std^2) noise on every label; normaliser
  d + noise_std^2.
- relu_2nn: f(x) = sqrt(2/h) * relu(x W1) W2 with W1 (d x h), W2 (h) standard normal;
  normaliser d.
- decision_tree: a full binary tree of depth `tree_depth` whose nodes test x[c] > 0 on a
  random coordinate c, with N(0, 1) values at the leaves; normaliser 1.

Baselines, each predicting y_i from the earlier pairs only (y_1 from nothing: 0):
least squares (the minimum-norm solution while i-1 < d), k nearest neighbours
(uniform average of the k closest earlier x's labels), averaging (w = mean_j y_j x_j,
prediction w.x_i) and the zero predictor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from tfkit.config.icl import CurriculumConfig, IclRunConfig, TaskConfig

BASELINES = ("least_squares", "knn", "averaging", "zero")


@dataclass(frozen=True)
class Stage:
    """The curriculum's values at one step."""

    dims: int
    points: int
    loops: int


def curriculum_value(step: int, start: int, end: int, inc: int, interval: int) -> int:
    """start + inc for every `interval` steps completed, capped at `end`."""
    return min(end, start + inc * (step // interval))


def stage_at(step: int, config: IclRunConfig) -> Stage:
    """Dims, points and loops at optimizer step `step` (0-based)."""
    c: CurriculumConfig = config.curriculum
    return Stage(
        dims=curriculum_value(step, config.dims_start, config.task.n_dims, c.dims_inc, c.dims_interval),
        points=curriculum_value(step, config.points_start, config.task.n_points, c.points_inc, c.points_interval),
        loops=curriculum_value(step, config.loops_start, config.loop.loops, c.loops_inc, c.loops_interval),
    )


def normaliser(task: TaskConfig, dims: int) -> float:
    """E[f(x)^2] of the task with `dims` active input dimensions: the zero predictor's squared error."""
    if task.task == "sparse_linear_regression":
        return float(min(task.sparsity, dims))
    if task.task == "noisy_linear_regression":
        return dims + task.noise_std**2
    if task.task == "decision_tree":
        return 1.0
    return float(dims)


def sample_prompts(
    task: TaskConfig, batch: int, points: int, dims: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of prompts: xs (batch, points, task.n_dims) with coordinates past `dims` zero, ys (batch, points).

    Everything is drawn from `generator`, on its device, so a seed fixes the batch.
    """
    device = generator.device
    B, n, d = batch, points, dims

    def normal(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator, device=device)

    xs = normal(B, n, d)  # (B, n, d)
    kind = task.task
    if kind in ("linear_regression", "sparse_linear_regression", "noisy_linear_regression"):
        w = normal(B, d, 1)  # (B, d, 1)
        if kind == "sparse_linear_regression":
            k = min(task.sparsity, d)
            order = torch.rand(B, d, generator=generator, device=device).argsort(dim=1)  # random subsets
            mask = torch.zeros(B, d, device=device).scatter_(1, order[:, :k], 1.0)
            w = w * mask.unsqueeze(-1)
        ys = (xs @ w).squeeze(-1)  # (B, n)
        if kind == "noisy_linear_regression":
            ys = ys + task.noise_std * normal(B, n)
    elif kind == "relu_2nn":
        h = task.relu_hidden
        w1, w2 = normal(B, d, h), normal(B, h, 1)
        ys = (torch.relu(xs @ w1) @ w2).squeeze(-1) * math.sqrt(2.0 / h)  # (B, n)
    elif kind == "decision_tree":
        depth = task.tree_depth
        nodes = 2 ** (depth + 1) - 1  # internal nodes first, leaves last (heap order)
        coords = torch.randint(0, d, (B, nodes), generator=generator, device=device)
        values = normal(B, nodes)
        node = torch.zeros(B, n, dtype=torch.long, device=device)  # (B, n): the root
        for _ in range(depth):
            coord = coords.gather(1, node)  # (B, n): the coordinate each point's node tests
            right = (xs.gather(2, coord.unsqueeze(-1)).squeeze(-1) > 0).long()
            node = 2 * node + 1 + right
        ys = values.gather(1, node)  # (B, n)
    else:
        raise ValueError(f"unknown task {kind!r}")
    if d < task.n_dims:
        xs = torch.cat([xs, xs.new_zeros(B, n, task.n_dims - d)], dim=2)  # (B, n, D)
    return xs, ys


def interleave(xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    """xs (B, n, D), ys (B, n) -> the model input (B, 2n, D): x_1, (y_1, 0...), x_2, (y_2, 0...), ..."""
    B, n, D = xs.shape
    ys_wide = torch.cat([ys.unsqueeze(-1), ys.new_zeros(B, n, D - 1)], dim=2)  # (B, n, D)
    return torch.stack([xs, ys_wide], dim=2).view(B, 2 * n, D)  # (B, 2n, D)


def predictions_at_x(out: torch.Tensor) -> torch.Tensor:
    """Model outputs (B, 2n) -> the predictions of y_1..y_n, read at the x positions (B, n)."""
    return out[:, ::2]


# --- baselines --------------------------------------------------------------------------------


def least_squares_predictions(xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    """Predict y_i by least squares on pairs 1..i-1 (minimum-norm while underdetermined); y_1: 0."""
    xs64, ys64 = xs.double(), ys.double()
    B, n, _ = xs.shape
    preds = torch.zeros(B, n, dtype=torch.float64, device=xs.device)
    for i in range(1, n):
        w = torch.linalg.pinv(xs64[:, :i]) @ ys64[:, :i].unsqueeze(-1)  # (B, D, 1): min-norm solution
        preds[:, i] = (xs64[:, i : i + 1] @ w).view(B)
    return preds.to(xs.dtype)


def knn_predictions(xs: torch.Tensor, ys: torch.Tensor, k: int) -> torch.Tensor:
    """Predict y_i as the mean label of the k earlier points nearest to x_i (fewer when fewer exist)."""
    B, n, _ = xs.shape
    preds = torch.zeros(B, n, dtype=xs.dtype, device=xs.device)
    dist = torch.cdist(xs, xs)  # (B, n, n)
    for i in range(1, n):
        m = min(k, i)
        nearest = dist[:, i, :i].topk(m, dim=1, largest=False).indices  # (B, m)
        preds[:, i] = ys[:, :i].gather(1, nearest).mean(1)
    return preds


def averaging_predictions(xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    """Predict y_i = x_i . w with w = mean over j < i of y_j x_j (Garg et al.'s averaging estimator)."""
    n = xs.shape[1]
    weighted = (ys.unsqueeze(-1) * xs).cumsum(1)  # (B, n, D): sum over j <= i of y_j x_j
    counts = torch.arange(1, n + 1, device=xs.device, dtype=xs.dtype).view(1, n, 1)
    w = torch.zeros_like(xs)
    w[:, 1:] = (weighted / counts)[:, :-1]  # mean over j < i
    return (w * xs).sum(-1)  # (B, n)


def baseline_errors(xs: torch.Tensor, ys: torch.Tensor, task: TaskConfig) -> dict[str, torch.Tensor]:
    """Per-position squared error of each baseline, averaged over prompts, not normalised: name -> (n,)."""
    preds = {
        "least_squares": least_squares_predictions(xs, ys),
        "knn": knn_predictions(xs, ys, task.knn_neighbours),
        "averaging": averaging_predictions(xs, ys),
        "zero": torch.zeros_like(ys),
    }
    return {name: (p - ys).square().mean(0) for name, p in preds.items()}
