"""`tfkit train icl`: in-context regression (Garg et al.'s tasks) with curricula and looped models."""

from __future__ import annotations

from typing import Any

from tfkit.cli._options import config_options, option_group
from tfkit.cli._output import console
from tfkit.cli.train import ProgressDisplay, RunOptions, run_training
from tfkit.config.icl import (
    ICL_SECTIONS,
    SOFTMAX_FIELDS,
    UNUSED_MODEL_FIELDS,
    UNUSED_TRAIN_FIELDS,
    IclRunConfig,
)

# options of the shared sections that icl runs have no use for
EXCLUDED = UNUSED_MODEL_FIELDS + UNUSED_TRAIN_FIELDS + SOFTMAX_FIELDS


class IclProgressDisplay(ProgressDisplay):
    """`ProgressDisplay` with the model's error at the last position next to the baselines'."""

    def on_eval(self, row: dict[str, Any]) -> None:
        if self.quiet:
            return
        last = max(int(k.rsplit("_", 1)[1]) for k in row if k.startswith("zero_loss_"))
        text = (
            f"step {row['step']:>6}  val_loss {row['val_loss']:.4f}  at point {last}: "
            f"model {row[f'val_loss_{last}']:.4f}  least squares {row[f'least_squares_loss_{last}']:.4f}  "
            f"averaging {row[f'averaging_loss_{last}']:.4f}  knn {row[f'knn_loss_{last}']:.4f}"
        )
        console.print(text, highlight=False)


SUMMARY_ROWS = (
    ("status", "status"),
    ("val_loss", "val loss (normalised squared error)"),
    ("step", "steps"),
    ("points_seen", "points (prompts x points)"),
    ("curriculum_dims", "dims at the end"),
    ("curriculum_points", "points at the end"),
    ("curriculum_loops", "loops at the end"),
    ("num_params", "parameters"),
    ("time_s", "wall time (s)"),
    ("skipped_steps", "skipped steps"),
)


@config_options(sections=ICL_SECTIONS, exclude=EXCLUDED)
@option_group(RunOptions, "run")
def icl(options: dict[str, Any], run: RunOptions) -> None:
    """Train a GPT or looped transformer to regress in context (linear, sparse, noisy, relu_2nn, decision_tree)."""
    run_training(options, run, IclRunConfig, "tfkit.training.icl:train_icl", IclProgressDisplay, SUMMARY_ROWS)
