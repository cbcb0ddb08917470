"""`tfkit train sft` and `tfkit train dpo`: fine-tune a trained GPT on chat data."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from tfkit.cli._errors import INTERRUPTED
from tfkit.cli._options import config_options
from tfkit.cli._output import console, key_value_table, print_error, print_json
from tfkit.cli.train import ProgressDisplay, build_config
from tfkit.training.finetune_config import DPO_OPTION_SECTIONS, SFT_OPTION_SECTIONS, DpoRunConfig, SftRunConfig

ConfigFile = Annotated[Path | None, typer.Option("--config", help="YAML file of options (nested by section or flat).")]
Sets = Annotated[list[str] | None, typer.Option("--set", help="Any config field: section.field=value (repeatable).")]
Overwrite = Annotated[bool, typer.Option(help="Replace a run already in --out.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")]
Json = Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")]


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


def _finish(result: Any, rows: tuple[tuple[str, str], ...], quiet: bool, json_output: bool) -> None:
    summary = {**result.summary, "run_dir": str(result.run_dir)}
    if result.pushed is not None:
        summary["s3"] = result.pushed
    if json_output:
        print_json(summary)
    elif not quiet:
        table = [(label, summary[key]) for key, label in rows if summary.get(key) is not None]
        console.print(key_value_table(f"Run {result.run_dir}", table))
    if result.status == "failed":
        print_error(f"run failed: {result.message}")
        raise typer.Exit(1)
    if result.status == "interrupted":
        raise typer.Exit(INTERRUPTED)


COMMON_ROWS = (
    ("step", "steps"),
    ("tokens_seen", "tokens"),
    ("num_params", "parameters"),
    ("wall_time_s", "wall time (s)"),
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
    quiet: Quiet = False,
    json_output: Json = False,
) -> None:
    """Fine-tune a trained GPT (--init) on instruction data, with the loss on response tokens only."""
    config = build_config(options, config_file, sets or [], [], config_class=SftRunConfig)
    from tfkit.training.sft import train_sft

    display = FinetuneProgressDisplay(quiet or json_output, ("val_acc", "val_acc"))
    _finish(train_sft(config, callback=display, overwrite=overwrite), SFT_ROWS, quiet, json_output)


@config_options(sections=DPO_OPTION_SECTIONS)
def dpo(
    options: dict[str, Any],
    config_file: ConfigFile = None,
    sets: Sets = None,
    overwrite: Overwrite = False,
    quiet: Quiet = False,
    json_output: Json = False,
) -> None:
    """Preference-tune a trained GPT (--init) with DPO against a frozen reference (--ref, default --init)."""
    config = build_config(options, config_file, sets or [], [], config_class=DpoRunConfig)
    from tfkit.training.dpo import train_dpo

    display = FinetuneProgressDisplay(quiet or json_output, ("val_rewards_accuracies", "reward accuracy"))
    _finish(train_dpo(config, callback=display, overwrite=overwrite), DPO_ROWS, quiet, json_output)
