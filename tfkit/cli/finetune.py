"""`tfkit train sft` and `tfkit train dpo`: fine-tune a trained GPT on chat data."""

from __future__ import annotations

from typing import Any

from tfkit.cli._options import ConfigFile, Json, Overwrite, Quiet, Resume, Sets, config_options
from tfkit.cli._output import console
from tfkit.cli.train import ProgressDisplay, build_config, report_run, resume_point
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
def sft(
    options: dict[str, Any],
    config_file: ConfigFile = None,
    sets: Sets = None,
    overwrite: Overwrite = False,
    resume: Resume = None,
    quiet: Quiet = False,
    json_output: Json = False,
) -> None:
    """Fine-tune a trained GPT (--init) on instruction data, with the loss on response tokens only."""
    checkpoint, base = resume_point(resume, options, SftRunConfig)
    config = build_config(options, config_file, sets or [], [], config_class=SftRunConfig, base=base)
    from tfkit.training.sft import train_sft

    display = FinetuneProgressDisplay(quiet or json_output, ("val_acc", "val_acc"))
    result = train_sft(
        config,
        callback=display,
        overwrite=overwrite or checkpoint == "fresh",
        resume=None if checkpoint == "fresh" else checkpoint,
    )
    report_run(result, SFT_ROWS, quiet, json_output)


@config_options(sections=DPO_OPTION_SECTIONS)
def dpo(
    options: dict[str, Any],
    config_file: ConfigFile = None,
    sets: Sets = None,
    overwrite: Overwrite = False,
    resume: Resume = None,
    quiet: Quiet = False,
    json_output: Json = False,
) -> None:
    """Preference-tune a trained GPT (--init) with DPO against a frozen reference (--ref, default --init)."""
    checkpoint, base = resume_point(resume, options, DpoRunConfig)
    config = build_config(options, config_file, sets or [], [], config_class=DpoRunConfig, base=base)
    from tfkit.training.dpo import train_dpo

    display = FinetuneProgressDisplay(quiet or json_output, ("val_rewards_accuracies", "reward accuracy"))
    result = train_dpo(
        config,
        callback=display,
        overwrite=overwrite or checkpoint == "fresh",
        resume=None if checkpoint == "fresh" else checkpoint,
    )
    report_run(result, DPO_ROWS, quiet, json_output)
