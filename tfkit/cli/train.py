"""`tfkit train`: train GPT models and write a run directory."""

from __future__ import annotations

import copy
import dataclasses
import importlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape

from tfkit.cli._errors import INTERRUPTED, TERMINATED, command
from tfkit.cli._options import (
    ConfigFile,
    Json,
    Overwrite,
    Params,
    Quiet,
    Resume,
    Sets,
    config_options,
    option_group,
)
from tfkit.cli._output import (
    console,
    err_console,
    is_interactive,
    key_value_table,
    print_error,
    print_json,
    progress_bar,
)
from tfkit.config import RunConfig
from tfkit.errors import ConfigError

train_app = typer.Typer(
    help="Train GPT models; every run writes a run directory (config, CSV logs, checkpoints, summary).",
    no_args_is_help=True,
)


def build_config(
    options: dict[str, Any],
    config_file: Path | None,
    sets: list[str],
    params: list[str],
    config_class: type = RunConfig,
    base: dict[str, Any] | None = None,
) -> Any:
    """Defaults of `config_class` (or `base`), then the YAML file, then the options typed, then --set and --param.

    Every value is validated as the config is built, and a run that cannot fit in its
    device's memory is refused here: bad input fails before anything is written or deleted.

    Args:
        base: the config to start from instead of the defaults (a resumed run's checkpoint config).
    """
    config = config_class() if base is None else config_class.from_stored(base, source="the checkpoint")
    if config_file is not None:
        config = config.with_yaml(config_file)
    config = config.with_updates(options, source="the command line")
    if sets:
        config = config.with_overrides(sets)
    if params:
        if "process_params" not in config.to_flat_dict():
            raise ConfigError("--param sets parameters of built-in processes; this command has none")
        merged = dict(config.data.process_params)
        for item in params:
            key, sep, value = item.partition("=")
            if not sep or not key.strip():
                raise ConfigError(f"--param expects name=value, got {item!r}")
            merged[key.strip()] = value.strip()
        config = config.with_updates({"data.process_params": merged}, source="--param")
    config.check_memory()
    return config


def resume_point(resume: str | None, options: dict[str, Any], config_class: type) -> tuple[Any, dict | None]:
    """What `--resume` continues: (the checkpoint loaded, `fresh` for a fresh start or None; the config to start from).

    `auto` finds the latest complete checkpoint in `--out` (none: a fresh start into it);
    a run directory or checkpoint file names one, and `--out` defaults to its run directory.
    In a run directory, a checkpoint that fails its digest or cannot be read is skipped for
    the newest that loads, with a warning line for each. The settings of the run come from
    the checkpoint; the sections a command derives (the `--init` model of sft / dpo) are
    derived again.
    """
    if resume is None:
        return None, None
    from tfkit.training.resume import resolve_resume
    from tfkit.training.task import Resumed

    out = options.get("log.out")
    if resume == "auto" and out is None:
        raise ConfigError("--resume auto looks for checkpoints in --out: give --out")
    checkpoint, state, skipped = resolve_resume(resume, Path(out) if out is not None else None)
    for note in skipped:
        err_console.print(
            f"[bold yellow]Warning:[/] {escape(note)}; resuming from {escape(str(checkpoint))}",
            highlight=False,
            soft_wrap=True,
        )
    if checkpoint is None:
        return "fresh", None
    if not isinstance(state, dict) or not isinstance(state.get("config"), dict):
        raise ConfigError(f"--resume {checkpoint} is not a tfkit training checkpoint (no config)")
    base = copy.deepcopy(state["config"])
    if getattr(config_class, "kind", None) in ("sft", "dpo"):
        base.pop("model", None)  # from --init again
    if out is None and checkpoint.parent.name == "checkpoints":
        base.setdefault("log", {})["out"] = str(checkpoint.parent.parent)
    return Resumed(checkpoint, state, skipped), base


class ProgressDisplay:
    """Training progress: a rich bar on a terminal, one line per evaluation otherwise."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.interactive = is_interactive() and not quiet
        self.progress: Any = None
        self.task: Any = None

    def on_start(self, info: dict[str, Any]) -> None:
        if self.quiet:
            return
        params = f"{info['num_params']:,} parameters"
        console.print(f"Training [bold]{info['data_source']}[/] on {info['device']} ({params}) -> {info['run_dir']}")
        if not self.interactive:
            return
        self.progress = progress_bar("[bold]train")
        self.task = self.progress.add_task("train", total=info["total_steps"], status="")
        self.progress.start()

    def on_warning(self, message: str) -> None:
        err_console.print(f"[bold yellow]Warning:[/] {escape(message)}", highlight=False, soft_wrap=True)

    def on_log(self, row: dict[str, Any]) -> None:
        if self.progress is None:
            return
        # icl rows count in-context points (points_seen), the others tokens
        label, unit = ("points", "pt") if "points_seen" in row else ("tokens", "tok")
        seen = row[f"{label}_seen"]
        rate = seen / max(row["time_s"], 1e-9)
        status = f"{label} {seen:,}  loss {row['train_loss']:.4f}  {rate:,.0f} {unit}/s"
        self.progress.update(self.task, completed=row["step"], status=status)

    def on_eval(self, row: dict[str, Any]) -> None:
        if self.quiet:
            return
        text = f"step {row['step']:>6}  val_loss {row['val_loss']:.5f}"
        if "excess_loss" in row:
            text += f"  optimal {row['optimal_loss']:.5f}  excess {row['excess_loss']:.5f}"
        console.print(text, highlight=False)

    def on_end(self, summary: dict[str, Any]) -> None:
        if self.progress is not None:
            self.progress.stop()


SUMMARY_ROWS = (
    ("status", "status"),
    ("val_loss", "val loss"),
    ("optimal_loss", "optimal loss"),
    ("excess_loss", "excess loss (nats)"),
    ("val_acc", "val accuracy"),
    ("step", "steps"),
    ("tokens_seen", "tokens"),
    ("num_params", "parameters"),
    ("num_params_non_embedding", "non-embedding parameters"),
    ("time_s", "wall time (s)"),
    ("tokens_per_s", "tokens/s"),
    ("skipped_steps", "skipped steps"),
)


def report_run(result: Any, rows: tuple[tuple[str, str], ...], quiet: bool, json_output: bool) -> None:
    """Print a finished run (a table of `rows`, or JSON); exit 1 if it failed, 130 / 143 after Ctrl-C / SIGTERM.

    A run out of this session's time (`time_limit`) exits 0, with a line saying how to continue it.
    """
    summary = {**result.summary, "run_dir": str(result.run_dir)}
    if result.pushed is not None:
        summary["s3"] = result.pushed
    if json_output:
        print_json(summary)
    elif not quiet:
        table = [(label, summary[key]) for key, label in rows if summary.get(key) is not None]
        console.print(key_value_table(f"Run {result.run_dir}", table))
        if result.pushed is not None:
            console.print(
                f"Pushed to {result.pushed['uri']} ({result.pushed['uploaded']} files uploaded)", highlight=False
            )
    if result.status == "time_limit" and not (quiet or json_output):
        console.print(f"Out of time: {escape(result.message or '')}", highlight=False, soft_wrap=True)
    if result.status == "failed":
        print_error(f"run failed: {result.message}")
        raise typer.Exit(1)
    if result.status == "interrupted":
        raise typer.Exit(TERMINATED if result.stopped_by == "SIGTERM" else INTERRUPTED)


@dataclasses.dataclass
class RunOptions:
    """The options every training command shares besides the config fields."""

    config_file: ConfigFile = None
    sets: Sets = None
    overwrite: Overwrite = False
    resume: Resume = None
    quiet: Quiet = False
    json_output: Json = False


def run_training(
    options: dict[str, Any],
    run: RunOptions,
    config_class: type,
    train: str,
    display: Callable[[bool], Any],
    rows: tuple[tuple[str, str], ...],
    params: list[str] | None = None,
) -> None:
    """What every `tfkit train` command does: build the config (resumed or not), train, report.

    Args:
        train: the training function as `module:name`, imported once the config is valid
            (the training modules import torch).
        display: makes the progress callback, given whether to stay quiet.
    """
    checkpoint, base = resume_point(run.resume, options, config_class)
    config = build_config(options, run.config_file, run.sets or [], params or [], config_class=config_class, base=base)
    module, name = train.split(":")
    train_run = getattr(importlib.import_module(module), name)
    follower = os.environ.get("RANK", "0") not in ("", "0")  # under torchrun, rank 0 alone reports
    result = train_run(
        config,
        callback=display(run.quiet or run.json_output or follower),
        overwrite=run.overwrite or checkpoint == "fresh",
        resume=None if checkpoint == "fresh" else checkpoint,
    )
    report_run(result, rows, run.quiet or follower, run.json_output and not follower)


@command(train_app, "pretrain")
@config_options()
@option_group(RunOptions, "run")
def pretrain(options: dict[str, Any], run: RunOptions, params: Params = None) -> None:
    """Pretrain a GPT on next-token prediction (built-in processes: --data mess3)."""
    run_training(options, run, RunConfig, "tfkit.training.loop:train", ProgressDisplay, SUMMARY_ROWS, params)
