"""`tfkit train sft` and `tfkit train dpo`: fine-tune a trained GPT on chat data."""

from __future__ import annotations

import functools
from typing import Any

from tfkit.cli._options import config_options, option_group
from tfkit.cli._output import console
from tfkit.cli.train import ProgressDisplay, RunOptions, run_training
from tfkit.config.finetune import DPO_OPTION_SECTIONS, SFT_OPTION_SECTIONS, DpoRunConfig, SftRunConfig


class FinetuneProgressDisplay(ProgressDisplay):
    """`ProgressDisplay` with the objective's own validation metric next to the loss."""

    def __init__(self, quiet: bool, extra: tuple[str, str]) -> None:
        super().__init__(quiet)
        self.extra = extra

    def on_eval(self, row: dict[str, Any]) -> None:
        if self.quiet:
            return
        key, label = self.extra
        console.print(f"step {row['step']:>6}  val_loss {row['val_loss']:.5f}  {label} {row[key]:.4f}", highlight=False)


COMMON_ROWS = (
    ("step", "steps"),
    ("tokens_seen", "tokens"),
    ("num_params", "parameters"),
    ("time_s", "wall time (s)"),
    ("skipped_steps", "skipped steps"),
)
SFT_ROWS = (("status", "status"), ("val_loss", "val loss (response)"), ("val_acc", "val token accuracy"), *COMMON_ROWS)
DPO_ROWS = (
    ("status", "status"),
    ("val_loss", "val loss"),
    ("val_rewards_accuracies", "val reward accuracy"),
    ("val_rewards_margins", "val reward margin"),
    *COMMON_ROWS,
)


@config_options(sections=SFT_OPTION_SECTIONS)
@option_group(RunOptions, "run")
def sft(options: dict[str, Any], run: RunOptions) -> None:
    """Fine-tune a trained GPT (--init) on instruction data, with the loss on response tokens only."""
    display = functools.partial(FinetuneProgressDisplay, extra=("val_acc", "val_acc"))
    run_training(options, run, SftRunConfig, "tfkit.training.sft:train_sft", display, SFT_ROWS)


@config_options(sections=DPO_OPTION_SECTIONS)
@option_group(RunOptions, "run")
def dpo(options: dict[str, Any], run: RunOptions) -> None:
    """Preference-tune a trained GPT (--init) with DPO against a frozen reference (--ref, default --init)."""
    display = functools.partial(FinetuneProgressDisplay, extra=("val_rewards_accuracies", "reward accuracy"))
    run_training(options, run, DpoRunConfig, "tfkit.training.dpo:train_dpo", display, DPO_ROWS)
