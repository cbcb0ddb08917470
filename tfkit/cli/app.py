"""The root `tfkit` command: registers each command group and maps errors to exit codes."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from typer.core import TyperGroup

import tfkit
from tfkit.cli._errors import USER_ERROR, command, interrupted, is_user_os_error, os_error_message
from tfkit.cli._output import print_error
from tfkit.cli.ablate import ablate_app
from tfkit.cli.analyze import analyze_app
from tfkit.cli.budget import budget
from tfkit.cli.data import data_app
from tfkit.cli.finetune import dpo, sft
from tfkit.cli.generate import generate
from tfkit.cli.hf import export_app, import_app
from tfkit.cli.icl import icl
from tfkit.cli.plot import plot
from tfkit.cli.s3 import s3_app
from tfkit.cli.tokenizer import tokenizer_app
from tfkit.cli.train import train_app
from tfkit.errors import TfkitError
from tfkit.signals import raise_on_sigterm


class RootGroup(TyperGroup):
    """The root command; `tfkit --help` is printed plainly.

    Typer's rich help layout imports `typer.rich_utils` and its rich dependencies, which is
    most of the time `tfkit --help` takes; the command list needs none of it. Every
    subcommand's help keeps the rich layout.
    """

    def format_help(self, ctx: Any, formatter: Any) -> None:
        super(TyperGroup, self).format_help(ctx, formatter)  # click's plain layout, past Typer's rich one


app = typer.Typer(
    name="tfkit",
    cls=RootGroup,
    help="Small-transformer research: data, tokenizers, training, ablations, plots and storage.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(data_app, name="data")
app.add_typer(tokenizer_app, name="tokenizer")
app.add_typer(train_app, name="train")
app.add_typer(s3_app, name="s3")
command(train_app, "icl")(icl)
command(train_app, "sft")(sft)
command(train_app, "dpo")(dpo)
command(app, "generate")(generate)
app.add_typer(ablate_app, name="ablate")
command(app, "plot")(plot)
command(app, "budget")(budget)
app.add_typer(analyze_app, name="analyze")
app.add_typer(export_app, name="export")
app.add_typer(import_app, name="import")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"tfkit {tfkit.__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit.")
    ] = False,
) -> None:
    """tfkit: small-transformer research from the terminal."""


def main() -> None:
    """The `tfkit` entry point: user errors end in one red line and exit 2, Ctrl-C in 130, SIGTERM in 143.

    SIGTERM raises `Terminated`, which unwinds like Ctrl-C, so long commands that write
    (tokenize, download, s3) clean up their temp files on the way out; `train` installs its
    own handler during a run and stops at a step boundary instead.
    """
    raise_on_sigterm()
    try:
        app()
    except TfkitError as e:  # errors raised outside a command body (e.g. in a callback)
        print_error(str(e))
        raise SystemExit(USER_ERROR) from None
    except OSError as e:
        if not is_user_os_error(e):
            raise
        print_error(os_error_message(e))
        raise SystemExit(USER_ERROR) from None
    except KeyboardInterrupt as e:
        raise SystemExit(interrupted(e).exit_code) from None
