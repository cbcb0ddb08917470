"""In-context regression: tasks, curricula, baselines, the windowed loss and the run directory."""

from __future__ import annotations

import json
import re

import polars as pl
import pytest
import torch

from tfkit.config.icl import TASKS, IclRunConfig, TaskConfig
from tfkit.data.icl import (
    Stage,
    averaging_predictions,
    baseline_errors,
    interleave,
    knn_predictions,
    least_squares_predictions,
    normaliser,
    predictions_at_x,
    sample_prompts,
    stage_at,
)
from tfkit.errors import ConfigError
from tfkit.training.icl import build_model, total_steps, train_icl, window_loss

TINY = {
    "depth": 1,
    "width": 16,
    "num_heads": 2,
    "n_loops": 3,
    "loop_window": 2,
    "batch_size": 8,
    "task.val_examples": 32,
    "max_steps": 6,
    "eval_every": 3,
    "log_every": 2,
    "device": "cpu",
}


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("task", TASKS)
def test_tasks_have_the_shapes_scale_and_determinism_of_their_seed(task):
    config = TaskConfig(task=task, n_dims=6, sparsity=2)
    xs, ys = sample_prompts(config, 4, 7, 4, gen(3))
    assert xs.shape == (4, 7, 6) and ys.shape == (4, 7)
    assert (xs[..., 4:] == 0).all() and (xs[..., :4] != 0).all()  # the dims curriculum: 4 of 6 active
    again = sample_prompts(config, 4, 7, 4, gen(3))
    assert torch.equal(xs, again[0]) and torch.equal(ys, again[1])
    assert not torch.equal(ys, sample_prompts(config, 4, 7, 4, gen(4))[1])
    # the normaliser is E[f(x)^2]: the zero predictor's normalised error is about 1
    xs, ys = sample_prompts(config, 2000, 8, 6, gen(0))
    assert ys.square().mean().item() / normaliser(config, 6) == pytest.approx(1.0, abs=0.12)


def test_sparse_and_tree_targets_are_what_they_claim():
    sparse = TaskConfig(task="sparse_linear_regression", n_dims=8, sparsity=3)
    xs, ys = sample_prompts(sparse, 5, 20, 8, gen(0))
    w = torch.linalg.lstsq(xs.double(), ys.double().unsqueeze(-1)).solution.squeeze(-1)  # (5, 8)
    assert ((w.abs() > 1e-4).sum(1) == 3).all()  # float32 labels: zeros to ~1e-7
    tree = TaskConfig(task="decision_tree", n_dims=4, tree_depth=2)
    _, ys = sample_prompts(tree, 3, 50, 4, gen(0))
    assert all(len(row.unique()) <= 4 for row in ys)  # at most 2^depth leaves per prompt


def test_curriculum_follows_start_increment_and_interval():
    config = IclRunConfig().with_updates(
        {
            "n_dims": 8,
            "dims_start": 2,
            "dims_inc": 3,
            "dims_interval": 10,
            "n_points": 9,
            "points_start": 5,
            "points_inc": 2,
            "points_interval": 4,
            "n_loops": 6,
            "loops_start": 1,
            "loops_inc": 1,
            "loops_interval": 1,
        }
    )
    stages = [stage_at(step, config) for step in (0, 3, 4, 9, 10, 20, 1000)]
    assert [s.dims for s in stages] == [2, 2, 2, 2, 5, 8, 8]
    assert [s.points for s in stages] == [5, 5, 7, 9, 9, 9, 9]
    assert [s.loops for s in stages] == [1, 4, 5, 6, 6, 6, 6]
    # the defaults: 2 -> 5 dims and 5 -> 11 points, the task's size from step 1,500; loops from the start
    plain = IclRunConfig()
    assert [stage_at(step, plain) for step in (0, 499, 500, 1500, 10**6)] == [
        Stage(2, 5, 6),
        Stage(2, 5, 6),
        Stage(3, 7, 6),
        Stage(5, 11, 6),
        Stage(5, 11, 6),
    ]
    # a start equal to the end turns that curriculum off; the default starts are capped at small ends
    off = plain.with_updates({"dims_start": 5, "points_start": 11})
    assert stage_at(0, off) == stage_at(5000, off) == Stage(5, 11, 6)
    small = plain.with_updates({"n_dims": 1, "n_points": 3}).resolved()
    assert (small.curriculum.dims_start, small.curriculum.points_start) == (1, 3)
    with pytest.raises(ConfigError, match="--n-dims 3 \\(the end of the curriculum\\) is below --dims-start 4"):
        plain.with_updates({"n_dims": 3, "dims_start": 4})


def test_least_squares_is_exact_once_points_reach_the_dimension_and_min_norm_before():
    task = TaskConfig(n_dims=5, n_points=11)
    xs, ys = sample_prompts(task, 64, 11, 5, gen(1))
    errors = baseline_errors(xs, ys, task)
    norm = normaliser(task, 5)
    lsq = errors["least_squares"] / norm
    # position i (1-based) sees i - 1 earlier points: exact from i - 1 >= d = 5
    assert (lsq[5:] < 1e-8).all() and (lsq[1:5] > 0.05).all()
    assert (errors["zero"] / norm).mean().item() == pytest.approx(1.0, abs=0.2)
    # underdetermined: the minimum-norm solution X^T (X X^T)^-1 y
    X, y = xs[0, :3].double(), ys[0, :3].double()
    w = X.T @ torch.linalg.solve(X @ X.T, y)
    expected = (xs[0, 3].double() @ w).item()
    assert least_squares_predictions(xs[:1], ys[:1])[0, 3].item() == pytest.approx(expected, rel=1e-5)


def test_averaging_and_knn_predict_from_earlier_points_only():
    xs = torch.tensor([[[1.0, 0.0], [0.0, 2.0], [1.0, 1.0], [3.0, 0.0]]])
    ys = torch.tensor([[2.0, -1.0, 4.0, 0.5]])
    avg = averaging_predictions(xs, ys)[0]
    # w_i = mean_{j<i} y_j x_j, prediction x_i . w_i
    w3 = (2.0 * torch.tensor([1.0, 0.0]) - 1.0 * torch.tensor([0.0, 2.0])) / 2
    w4 = (2.0 * torch.tensor([1.0, 0.0]) - 1.0 * torch.tensor([0.0, 2.0]) + 4.0 * torch.tensor([1.0, 1.0])) / 3
    assert avg.tolist() == pytest.approx([0.0, 0.0, float(xs[0, 2] @ w3), float(xs[0, 3] @ w4)])
    knn = knn_predictions(xs, ys, k=2)[0]
    # x_4 = (3, 0): nearest earlier points (1, 0) and (1, 1) -> mean(2, 4); x_2: only one earlier point
    assert knn.tolist() == pytest.approx([0.0, 2.0, (2.0 - 1.0) / 2, 3.0])


def test_loss_covers_exactly_the_last_window_loops():
    config = IclRunConfig().with_updates({**TINY, "n_loops": 5, "loop_window": 2}).resolved()
    torch.manual_seed(0)
    model = build_model(config)
    for p in model.parameters():  # large weights: predictions that differ visibly from loop to loop
        torch.nn.init.normal_(p, std=0.5)
    xs, ys = sample_prompts(config.task, 4, 11, 5, gen(0))
    z = interleave(xs, ys)
    assert torch.equal(predictions_at_x(z[..., 0]), xs[..., 0])  # x_i at even positions
    loss = window_loss(model(z, 5, 2), ys, 5.0)
    every = model(z, 5)
    per_loop = [(predictions_at_x(o) - ys).square().mean() / 5.0 for o in every]
    torch.testing.assert_close(loss, (per_loop[3] + per_loop[4]) / 2)
    assert not torch.isclose(loss, torch.stack(per_loop).mean())


def test_train_writes_the_run_directory_with_curriculum_and_per_position_columns(tmp_path):
    config = IclRunConfig().with_updates(
        {**TINY, "points_start": 7, "points_inc": 2, "points_interval": 2, "out": str(tmp_path / "run")}
    )
    result = train_icl(config)
    assert result.status == "completed"
    run = tmp_path / "run"
    train_log = pl.read_csv(run / "train_log.csv")
    assert train_log["curriculum_points"].to_list() == [7, 9, 11]  # steps 2, 4, 6 (points at steps 1, 3, 5)
    assert train_log["seq_len"].to_list() == train_log["curriculum_points"].to_list()
    val_log = pl.read_csv(run / "val_log.csv")
    assert val_log["step"].to_list() == [3, 6]
    for prefix in ("val_loss", "least_squares_loss", "knn_loss", "averaging_loss", "zero_loss"):
        positions = [c for c in val_log.columns if re.fullmatch(rf"{prefix}_\d+", c)]
        assert positions == [f"{prefix}_{i}" for i in range(1, 12)]
    assert [c for c in val_log.columns if c.startswith("val_loss_loop_")] == [f"val_loss_loop_{k}" for k in range(1, 7)]
    assert val_log["val_loss"].to_list() == val_log["val_loss_loop_3"].to_list()  # scored at --n-loops
    summary = json.loads((run / "summary.json").read_text())
    tokens = 8 * (7 + 7 + 9 + 9 + 11 + 11)  # prompts x points per step
    assert summary["points_seen"] == tokens and summary["step"] == 6 and "tokens_seen" not in summary
    assert [p.name for p in (run / "checkpoints").glob("*.pt")] == [f"{tokens}.pt"]
    saved = json.loads((run / "train_config.json").read_text())
    assert saved["loop"] == {"model": "looped", "n_loops": 3, "loop_window": 2, "eval_loops": 6}
    assert saved["model"]["max_seq_len"] == 22
    # the same seed gives the same run
    again = train_icl(config.with_updates({"out": str(tmp_path / "again")}))
    assert again.summary["val_loss"] == summary["val_loss"]


def test_train_log_ends_at_the_last_step(tmp_path):
    result = train_icl(IclRunConfig().with_updates({**TINY, "max_steps": 5, "out": str(tmp_path / "run")}))
    assert pl.read_csv(tmp_path / "run" / "train_log.csv")["step"].to_list() == [2, 4, 5]  # log_every 2, then the last
    assert result.summary["step"] == 5


def test_gpt_model_and_example_budget():
    config = IclRunConfig().with_updates({**TINY, "model": "gpt", "n_loops": None, "loop_window": None})
    assert config.resolved().loop.n_loops is None and config.loop.scored_loops == 1
    budget = config.with_updates({"max_steps": None, "max_tokens": 8 * 11 * 10, "points_start": 11})
    assert total_steps(budget) == 10
    ramp = budget.with_updates({"points_start": 5, "points_inc": 6, "points_interval": 1})
    assert total_steps(ramp) == 11  # 8 * (5 + 11 * k) >= 880 first at k = 10
    with pytest.raises(ConfigError, match="no epochs"):
        config.with_updates({"max_epochs": 1})
