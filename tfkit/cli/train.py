"""`tfkit train`: train GPT models and write a run directory."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from tfkit.cli._errors import INTERRUPTED, command
from tfkit.cli._options import ConfigFile, Json, Overwrite, Quiet, Sets, config_options
from tfkit.cli._output import console, is_interactive, key_value_table, print_error, print_json, progress_bar
from tfkit.config import RunConfig
from tfkit.errors import ConfigError

train_app = typer.Typer(
    help="Train GPT models; every run writes a run directory (config, CSV logs, checkpoints, summary).",
    no_args_is_help=True,
)


def build_config(
    options: dict[str, Any], config_file: Path | None, sets: list[str], params: list[str], config_class: type = RunConfig
) -> Any:
    """Defaults of `config_class`, then the YAML file, then the options typed, then --set and --param."""
    config = config_class()
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
    return config


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

    def on_log(self, row: dict[str, Any]) -> None:
        if self.progress is None:
            return
        rate = row["tokens_seen"] / max(row["time_s"], 1e-9)
        status = f"tokens {row['tokens_seen']:,}  loss {row['train_loss']:.4f}  {rate:,.0f} tok/s"
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
    ("wall_time_s", "wall time (s)"),
    ("tokens_per_s", "tokens/s"),
    ("skipped_steps", "skipped steps"),
)


def report_run(result: Any, rows: tuple[tuple[str, str], ...], quiet: bool, json_output: bool) -> None:
    """Print a finished run (a table of `rows`, or JSON) and exit 1 if it failed, 130 if interrupted."""
    summary = {**result.summary, "run_dir": str(result.run_dir)}
    if result.pushed is not None:
        summary["s3"] = result.pushed
    if json_output:
        print_json(summary)
    elif not quiet:
        table = [(label, summary[key]) for key, label in rows if summary.get(key) is not None]
        console.print(key_value_table(f"Run {result.run_dir}", table))
        if result.pushed is not None:
            console.print(f"Pushed to {result.pushed['uri']} ({result.pushed['uploaded']} files uploaded)", highlight=False)
    if result.status == "failed":
        print_error(f"run failed: {result.message}")
        raise typer.Exit(1)
    if result.status == "interrupted":
        raise typer.Exit(INTERRUPTED)


@command(train_app, "pretrain")
@config_options()
def pretrain(
    options: dict[str, Any],
    config_file: ConfigFile = None,
    sets: Sets = None,
    params: Annotated[
        list[str] | None, typer.Option("--param", help="Process parameter name=value, e.g. x=0.2 (repeatable).")
    ] = None,
    overwrite: Overwrite = False,
    quiet: Quiet = False,
    json_output: Json = False,
) -> None:
    """Pretrain a GPT on next-token prediction (built-in processes: --data mess3)."""
    config = build_config(options, config_file, sets or [], params or [])
    from tfkit.training.loop import train

    display = ProgressDisplay(quiet or json_output)
    result = train(config, callback=display, overwrite=overwrite)  # type: ignore[arg-type]
    report_run(result, SUMMARY_ROWS, quiet, json_output)
